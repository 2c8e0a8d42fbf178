//! Reads Consul's answers to `GET /v1/health/service/<name>` incrementally. Each answer is
//! compared byte for byte with the one before, and only the stretch that differs is parsed,
//! into the three fields the balancer needs. Consul orders the entries (by node, then by
//! service ID), so one instance joining or leaving changes one stretch of an answer that is
//! megabytes long with thousands of instances; anything else is parsed whole.

use std::{borrow::Cow, collections::HashSet, net::SocketAddr, ops::Range, sync::Arc};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::consul::Weights;

/// One passing instance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// Shared, not copied, by every list and member that holds the instance.
    pub id: Arc<str>,
    pub addr: SocketAddr,
    /// Consul `Weights.Passing`; 1 when Consul does not send weights.
    pub weight: u32,
}

/// What an entry of the answer holds that the balancer reads; the rest (node metadata,
/// check outputs, tagged addresses…) is skipped unread.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireEntry<'a> {
    #[serde(borrow)]
    node: WireNode<'a>,
    #[serde(borrow)]
    service: WireService<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireNode<'a> {
    #[serde(borrow, default)]
    address: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireService<'a> {
    #[serde(rename = "ID", borrow)]
    id: Cow<'a, str>,
    /// Empty when the instance registered without one: the node's address is used then.
    #[serde(borrow, default)]
    address: Cow<'a, str>,
    port: u16,
    /// Absent before Consul 1.2.3: weight 1.
    #[serde(default)]
    weights: Option<Weights>,
}

impl WireEntry<'_> {
    /// `None` (and a warning) for an instance whose address is not an IP.
    fn endpoint(&self) -> Option<Endpoint> {
        let host = if self.service.address.is_empty() {
            &self.node.address
        } else {
            &self.service.address
        };
        let Ok(ip) = host.parse() else {
            tracing::warn!(service_id = %self.service.id, address = %host, "instance address is not an IP; skipped");
            return None;
        };
        Some(Endpoint {
            id: Arc::from(&*self.service.id),
            addr: SocketAddr::new(ip, self.service.port),
            weight: self.service.weights.map_or(1, |w| w.passing.max(1)),
        })
    }
}

/// One entry of the last answer: where it lies in the body, and what it says.
#[derive(Debug, Clone)]
struct Entry {
    span: Range<usize>,
    endpoint: Option<Endpoint>,
}

/// What an answer changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub added: Vec<Endpoint>,
    pub removed: Vec<Endpoint>,
    /// Bytes of the answer that had to be parsed.
    pub parsed: usize,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// The last answer and its entries, ready to take the next one. Answers are read into
/// buffers that are kept and reused (see [`Self::update`]): at thousands of instances an
/// answer is megabytes, and fresh memory for each would cost more than reading it.
#[derive(Debug, Default)]
pub struct HealthEntries {
    body: Vec<u8>,
    entries: Vec<Entry>,
}

impl HealthEntries {
    /// The instances of the last answer, in Consul's order (skipping those without an IP).
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.entries.iter().filter_map(|e| e.endpoint.as_ref())
    }

    /// Takes the next answer from `body`, and leaves the last one's buffer there to be
    /// cleared and filled again. On an error (a body that is not Consul's JSON) the last
    /// answer stays in place.
    pub fn update(&mut self, body: &mut Vec<u8>) -> Result<Delta, serde_json::Error> {
        let old = &self.body[..];
        let new = &body[..];
        if old == new {
            return Ok(Delta::default());
        }
        let Some((keep_front, keep_back, region)) = changed_stretch(old, new, &self.entries) else {
            return self.replace(body);
        };
        // The stretch holds whole entries separated by commas, or nothing.
        let mut wrapped = Vec::with_capacity(region.len() + 2);
        wrapped.push(b'[');
        wrapped.extend_from_slice(&new[region.clone()]);
        wrapped.push(b']');
        let Ok(parsed) = parse(&wrapped) else {
            return self.replace(body);
        };
        // Offsets in `wrapped` are one past those in the body, from the stretch's start.
        let shift = region.start as isize - 1;
        let fresh: Vec<Entry> = parsed
            .into_iter()
            .map(|e| Entry {
                span: offset(&e.span, shift),
                endpoint: e.endpoint,
            })
            .collect();
        let delta_len = new.len() as isize - old.len() as isize;
        let changed = keep_front..self.entries.len() - keep_back;
        let delta = diff(&self.entries[changed.clone()], &fresh, wrapped.len());
        // In place: the entries on either side move, none is copied.
        let back = keep_front + fresh.len();
        self.entries.splice(changed, fresh);
        for e in &mut self.entries[back..] {
            e.span = offset(&e.span, delta_len);
        }
        std::mem::swap(&mut self.body, body);
        Ok(delta)
    }

    /// Parses `body` whole.
    fn replace(&mut self, body: &mut Vec<u8>) -> Result<Delta, serde_json::Error> {
        let entries = parse(body)?;
        let delta = diff(&self.entries, &entries, body.len());
        self.entries = entries;
        std::mem::swap(&mut self.body, body);
        Ok(delta)
    }
}

fn offset(span: &Range<usize>, by: isize) -> Range<usize> {
    span.start.saturating_add_signed(by)..span.end.saturating_add_signed(by)
}

/// Parses a JSON array of health entries, keeping where each lies in `json`.
fn parse(json: &[u8]) -> Result<Vec<Entry>, serde_json::Error> {
    let raw: Vec<&RawValue> = serde_json::from_slice(json)?;
    let base = json.as_ptr() as usize;
    raw.into_iter()
        .map(|r| {
            let text = r.get();
            let start = text.as_ptr() as usize - base;
            let entry: WireEntry<'_> = serde_json::from_str(text)?;
            Ok(Entry {
                span: start..start + text.len(),
                endpoint: entry.endpoint(),
            })
        })
        .collect()
}

/// Which instances left and which joined between `before` and `after`.
fn diff(before: &[Entry], after: &[Entry], parsed: usize) -> Delta {
    Delta {
        added: missing(after, before),
        removed: missing(before, after),
        parsed,
    }
}

/// The instances of `from` that `other` lacks.
fn missing(from: &[Entry], other: &[Entry]) -> Vec<Endpoint> {
    let other: HashSet<&Endpoint> = other.iter().filter_map(|e| e.endpoint.as_ref()).collect();
    from.iter()
        .filter_map(|e| e.endpoint.as_ref())
        .filter(|e| !other.contains(e))
        .cloned()
        .collect()
}

/// Where `new` differs from `old`, in whole entries of `old`: how many entries at the front
/// and at the back are byte for byte the same, and the stretch of `new` between them. One
/// entry more on each side than the bytes require is reparsed, so that the stretch starts
/// and ends at an entry's edge however the separators moved. `None`: no entries to reuse.
fn changed_stretch(
    old: &[u8],
    new: &[u8],
    entries: &[Entry],
) -> Option<(usize, usize, Range<usize>)> {
    if entries.is_empty() {
        return None;
    }
    let front = common_prefix(old, new);
    let back = common_suffix(&old[front..], &new[front..]);
    // The first entry touching the change, then one more.
    let i0 = entries
        .partition_point(|e| e.span.start <= front)
        .saturating_sub(2);
    // The last entry touching the change, then one more.
    let old_end = old.len() - back;
    let i1 = (entries.partition_point(|e| e.span.end < old_end) + 1).min(entries.len() - 1);
    let start = entries[i0].span.start;
    let end = entries[i1]
        .span
        .end
        .checked_add_signed(new.len() as isize - old.len() as isize)?;
    // The stretch of `new` must lie within the bytes both answers share at each end.
    if start > front || end < new.len() - back || end < start || end > new.len() {
        return None;
    }
    Some((i0, entries.len() - 1 - i1, start..end))
}

/// How many bytes `a` and `b` share at the front (memcmp on blocks, then bytes).
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 4096;
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + BLOCK <= n && a[i..i + BLOCK] == b[i..i + BLOCK] {
        i += BLOCK;
    }
    while i + 64 <= n && a[i..i + 64] == b[i..i + 64] {
        i += 64;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// How many bytes `a` and `b` share at the back.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 4096;
    let n = a.len().min(b.len());
    let (la, lb) = (a.len(), b.len());
    let mut i = 0;
    while i + BLOCK <= n && a[la - i - BLOCK..la - i] == b[lb - i - BLOCK..lb - i] {
        i += BLOCK;
    }
    while i + 64 <= n && a[la - i - 64..la - i] == b[lb - i - 64..lb - i] {
        i += 64;
    }
    while i < n && a[la - i - 1] == b[lb - i - 1] {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, port: u16) -> String {
        format!(
            r#"{{
    "Node": {{"Node": "vm", "Address": "127.0.0.1", "Meta": {{"a": "}}]["}}}},
    "Service": {{"ID": "{id}", "Service": "s", "Address": "", "Port": {port},
        "Weights": {{"Passing": 2, "Warning": 1}}}},
    "Checks": [{{"CheckID": "serfHealth", "Status": "passing", "Output": "ok, \"}}\""}}]
}}"#
        )
    }

    fn refs(v: &[(String, u16)]) -> Vec<(&str, u16)> {
        v.iter().map(|(i, p)| (i.as_str(), *p)).collect()
    }

    fn answer(ids: &[(&str, u16)]) -> Vec<u8> {
        let entries: Vec<String> = ids.iter().map(|(id, p)| entry(id, *p)).collect();
        format!("[\n{}\n]\n", entries.join(",\n")).into_bytes()
    }

    fn ids(h: &HealthEntries) -> Vec<(String, u16)> {
        h.endpoints()
            .map(|e| (e.id.to_string(), e.addr.port()))
            .collect()
    }

    fn names(d: &[Endpoint]) -> Vec<&str> {
        d.iter().map(|e| &*e.id).collect()
    }

    #[test]
    fn a_join_or_a_leave_parses_only_the_entries_around_it() {
        let many: Vec<(String, u16)> = (0..200).map(|i| (format!("s-{i:03}"), 7000 + i)).collect();
        let mut h = HealthEntries::default();
        let first = answer(&refs(&many));
        let d = h.update(&mut first.clone()).expect("an answer");
        assert_eq!(d.added.len(), 200);
        assert_eq!(d.parsed, first.len());

        // s-100 leaves: three entries' worth is parsed, not the whole answer.
        let mut fewer = many.clone();
        fewer.remove(100);
        let second = answer(&refs(&fewer));
        let d = h.update(&mut second.clone()).expect("an answer");
        assert_eq!(names(&d.removed), ["s-100"]);
        assert!(d.added.is_empty());
        assert!(
            d.parsed * 20 < second.len(),
            "parsed {} of {}",
            d.parsed,
            second.len()
        );
        assert_eq!(ids(&h), fewer);

        // It joins again, on another port.
        let mut back = many.clone();
        back[100].1 = 9100;
        let d = h.update(&mut answer(&refs(&back))).expect("an answer");
        assert_eq!(names(&d.added), ["s-100"]);
        assert_eq!(d.added[0].addr.port(), 9100);
        assert_eq!(ids(&h), back);

        // At the very front and the very back.
        for changed in [&back[1..], &back[..199], &back[1..199]] {
            h.update(&mut answer(&refs(changed))).expect("an answer");
            assert_eq!(ids(&h), changed);
            h.update(&mut answer(&refs(&back))).expect("an answer");
            assert_eq!(ids(&h), back);
        }

        // The same answer again changes nothing and parses nothing.
        let d = h.update(&mut answer(&refs(&back))).expect("an answer");
        assert_eq!(d, Delta::default());
    }

    #[test]
    fn every_reordering_or_edit_ends_in_the_same_set_as_a_fresh_parse() {
        // Adjacent instances with near-identical bytes are the hard case for a byte diff.
        let pool: Vec<(String, u16)> = (0..12).map(|i| (format!("s-{i}"), 7000)).collect();
        let mut h = HealthEntries::default();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut incremental = 0;
        for _ in 0..500 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let pick: Vec<(&str, u16)> = pool
                .iter()
                .enumerate()
                .filter(|(i, _)| seed >> (i * 3) & 3 != 0)
                .map(|(i, (id, p))| (id.as_str(), p + (seed >> (40 + i % 8) & 1) as u16))
                .collect();
            let body = answer(&pick);
            let before: HashSet<Endpoint> = h.endpoints().cloned().collect();
            let d = h.update(&mut body.clone()).expect("an answer");
            incremental += usize::from(d.parsed < body.len());
            let mut fresh = HealthEntries::default();
            fresh.update(&mut body.clone()).expect("an answer");
            assert_eq!(ids(&h), ids(&fresh));
            let after: HashSet<Endpoint> = h.endpoints().cloned().collect();
            let added: HashSet<Endpoint> = d.added.into_iter().collect();
            let removed: HashSet<Endpoint> = d.removed.into_iter().collect();
            assert_eq!(added, after.difference(&before).cloned().collect());
            assert_eq!(removed, before.difference(&after).cloned().collect());
        }
        assert!(
            incremental > 100,
            "only {incremental} of 500 answers took the short way"
        );
    }

    #[test]
    fn an_empty_answer_and_a_broken_one() {
        let mut h = HealthEntries::default();
        h.update(&mut answer(&[("a", 1), ("b", 2)]))
            .expect("an answer");
        let d = h.update(&mut b"[]".to_vec()).expect("an answer");
        assert_eq!(names(&d.removed), ["a", "b"]);
        assert_eq!(h.endpoints().count(), 0);
        h.update(&mut answer(&[("a", 1)])).expect("an answer");
        assert!(h.update(&mut b"[{\"Node\": 1".to_vec()).is_err());
        assert_eq!(
            ids(&h),
            [("a".to_owned(), 1)],
            "a broken answer keeps the last"
        );
    }

    #[test]
    fn entries_decode_without_weights_with_null_meta_and_the_node_address() {
        let body = r#"[{"Node": {"Node": "n", "Address": "10.0.0.9"},
            "Service": {"ID": "x", "Service": "s", "Meta": null, "Port": 7, "Address": ""},
            "Checks": []},
            {"Node": {"Node": "n", "Address": "10.0.0.9"},
            "Service": {"ID": "y", "Service": "s", "Port": 8, "Address": "not-an-ip"}}]"#;
        let mut h = HealthEntries::default();
        h.update(&mut body.as_bytes().to_vec()).expect("an answer");
        let all: Vec<&Endpoint> = h.endpoints().collect();
        assert_eq!(all.len(), 1, "the instance without an IP is skipped");
        assert_eq!(all[0].addr, "10.0.0.9:7".parse().expect("an address"));
        assert_eq!(all[0].weight, 1);
    }
}
