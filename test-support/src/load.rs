//! An HTTP/1.1 load generator for the benchmarks, light enough to share a small host with the
//! stack it loads. Closed loop: each connection sends its next request when the last one is
//! answered. Open loop: requests are due on a fixed schedule (`rate` a second) whatever the
//! latency; a free connection takes the next due request, and latency counts from when it
//! was due, so time spent waiting for a connection (or for a core) counts too. Connections
//! are opened before the clock starts; every 503 is checked for `Retry-After`.

use serde::Serialize;
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

/// What to send, how hard and for how long.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `host:port`.
    pub addr: String,
    /// The request, rendered once.
    pub request: Vec<u8>,
    pub connections: usize,
    /// Requests a second (open loop), or `None` for a closed loop.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Per request, from when it is sent to its whole answer.
    pub timeout: Duration,
}

impl Plan {
    /// `GET` of `url` (`http://host:port/path?query`) with `headers` (`Name: value`).
    pub fn get(url: &str, headers: &[String]) -> Result<(String, Vec<u8>), String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
        let (addr, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if addr.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
        for h in headers {
            if !h.contains(':') || h.contains('\r') || h.contains('\n') {
                return Err(format!("{h:?}: a header is `Name: value` on one line"));
            }
            let _ = write!(request, "{h}\r\n");
        }
        request.push_str("\r\n");
        Ok((addr.to_owned(), request.into_bytes()))
    }
}

/// What one run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub seconds: f64,
    /// CPU seconds the generator itself used (user + system), where `/proc` tells.
    pub cpu_seconds: Option<f64>,
    /// Answers by status code.
    pub status: BTreeMap<u16, u64>,
    /// Failures with no answer, by kind (connect, timeout, closed, io, malformed).
    pub errors: BTreeMap<&'static str, u64>,
    /// 503 answers without `Retry-After`.
    pub unavailable_without_retry_after: u64,
    /// Latencies in microseconds: 2xx answers, and every other answer.
    pub ok_micros: Vec<u64>,
    pub other_micros: Vec<u64>,
    /// Open loop: how late each request was sent after it was due, in microseconds (the
    /// generator's own delay: no free connection, or no CPU for it). Part of the latencies.
    pub late_micros: Vec<u64>,
}

impl Report {
    fn merge(&mut self, other: Report) {
        for (k, v) in other.status {
            *self.status.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.unavailable_without_retry_after += other.unavailable_without_retry_after;
        self.ok_micros.extend(other.ok_micros);
        self.other_micros.extend(other.other_micros);
        self.late_micros.extend(other.late_micros);
    }

    /// The JSON the bench scripts read; percentiles in milliseconds (null when none).
    pub fn to_json(&mut self) -> String {
        let spread = |v: &mut Vec<u64>| {
            v.sort_unstable();
            Spread {
                p50: percentile(v, 0.50),
                p99: percentile(v, 0.99),
                max: percentile(v, 1.0),
            }
        };
        let summary = Summary {
            seconds: self.seconds,
            cpu_seconds: self.cpu_seconds,
            status: &self.status,
            errors: &self.errors,
            unavailable_without_retry_after: self.unavailable_without_retry_after,
            ok_ms: spread(&mut self.ok_micros),
            other_ms: spread(&mut self.other_micros),
            late_ms: spread(&mut self.late_micros),
        };
        serde_json::to_string(&summary).unwrap_or_default()
    }
}

#[derive(Serialize)]
struct Summary<'a> {
    seconds: f64,
    cpu_seconds: Option<f64>,
    status: &'a BTreeMap<u16, u64>,
    errors: &'a BTreeMap<&'static str, u64>,
    unavailable_without_retry_after: u64,
    ok_ms: Spread,
    other_ms: Spread,
    late_ms: Spread,
}

#[derive(Serialize)]
struct Spread {
    p50: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
}

/// The `q` quantile of sorted microseconds, in milliseconds.
fn percentile(sorted: &[u64], q: f64) -> Option<f64> {
    let rank = ((sorted.len() as f64) * q).ceil().max(1.0) as usize;
    let micros = *sorted.get(rank.min(sorted.len()).checked_sub(1)?)?;
    Some(micros as f64 / 1e3)
}

/// Runs `plan`; requests still running at the end are waited for (up to their timeout).
pub async fn run(plan: Plan) -> Report {
    let plan = Arc::new(plan);
    let next = Arc::new(AtomicU64::new(0));
    let n = plan.connections.max(1);
    // Every connection is opened before the clock starts: the run measures requests on
    // kept connections, not a burst of connects at its start.
    let (start_tx, start_rx) = tokio::sync::watch::channel(None);
    let ready = Arc::new(tokio::sync::Semaphore::new(0));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (plan, next, mut start_rx, ready) =
                (plan.clone(), next.clone(), start_rx.clone(), ready.clone());
            tokio::spawn(async move {
                let stream = tokio::time::timeout(plan.timeout, open(&plan.addr))
                    .await
                    .ok()
                    .and_then(Result::ok);
                ready.add_permits(1);
                let start = loop {
                    if let Some(start) = *start_rx.borrow_and_update() {
                        break start;
                    }
                    if start_rx.changed().await.is_err() {
                        return Report::default();
                    }
                };
                connection(plan, next, start, stream).await
            })
        })
        .collect();
    if let Ok(all) = ready
        .acquire_many(u32::try_from(n).unwrap_or(u32::MAX))
        .await
    {
        all.forget();
    }
    let _ = start_tx.send(Some(Instant::now()));
    let mut report = Report::default();
    for task in tasks {
        if let Ok(part) = task.await {
            report.merge(part);
        }
    }
    report.seconds = plan.duration.as_secs_f64();
    report.cpu_seconds = own_cpu_seconds();
    report
}

/// This process's user + system CPU time, from `/proc/self/stat` (Linux; clock ticks of
/// 1/100 s, the value on every Linux platform this runs on).
fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// One connection's share of the run.
async fn connection(
    plan: Arc<Plan>,
    next: Arc<AtomicU64>,
    start: Instant,
    mut stream: Option<TcpStream>,
) -> Report {
    let mut report = Report::default();
    let end = start + plan.duration;
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        let due = match plan.rate {
            Some(rate) => {
                let slot = next.fetch_add(1, Ordering::Relaxed);
                let due = start + Duration::from_secs_f64(slot as f64 / rate);
                if due >= end {
                    break;
                }
                tokio::time::sleep_until(due).await;
                due
            }
            None => {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                now
            }
        };
        if plan.rate.is_some() {
            report
                .late_micros
                .push(u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX));
        }
        let answer =
            tokio::time::timeout(plan.timeout, exchange(&plan, &mut stream, &mut buf)).await;
        let micros = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
        match answer {
            Ok(Ok(answer)) => {
                *report.status.entry(answer.status).or_default() += 1;
                if (200..300).contains(&answer.status) {
                    report.ok_micros.push(micros);
                } else {
                    report.other_micros.push(micros);
                    if answer.status == 503 && !answer.retry_after {
                        report.unavailable_without_retry_after += 1;
                    }
                }
                if answer.close {
                    stream = None;
                }
            }
            Ok(Err(kind)) => {
                *report.errors.entry(kind).or_default() += 1;
                stream = None;
                if kind == "connect" {
                    // Don't spin on a refused connect: the next slot will try again.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Err(_) => {
                *report.errors.entry("timeout").or_default() += 1;
                stream = None;
            }
        }
    }
    report
}

async fn open(addr: &str) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

struct Answer {
    status: u16,
    retry_after: bool,
    close: bool,
}

/// One request and its whole answer on the kept connection (opened when there is none).
async fn exchange(
    plan: &Plan,
    stream: &mut Option<TcpStream>,
    buf: &mut Vec<u8>,
) -> Result<Answer, &'static str> {
    let s = match stream {
        Some(s) => s,
        None => stream.insert(open(&plan.addr).await.map_err(|_| "connect")?),
    };
    s.write_all(&plan.request).await.map_err(|_| "io")?;
    buf.clear();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(buf) {
            Ok(httparse::Status::Complete(head)) => {
                let status = response.code.ok_or("malformed")?;
                let mut length = 0usize;
                let mut retry_after = false;
                let mut close = false;
                for h in response.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok())
                            .ok_or("malformed")?;
                    } else if h.name.eq_ignore_ascii_case("retry-after") {
                        retry_after = true;
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        close = h.value.eq_ignore_ascii_case(b"close");
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        // The servers under test send lengths; a chunked answer is not read.
                        return Err("malformed");
                    }
                }
                while buf.len() < head + length {
                    read_more(s, buf).await?;
                }
                return Ok(Answer {
                    status,
                    retry_after,
                    close,
                });
            }
            Ok(httparse::Status::Partial) => read_more(s, buf).await?,
            Err(_) => return Err("malformed"),
        }
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), &'static str> {
    if buf.len() > 1 << 20 {
        return Err("malformed");
    }
    buf.reserve(16 * 1024);
    match s.read_buf(buf).await {
        Ok(0) => Err("closed"),
        Ok(_) => Ok(()),
        Err(_) => Err("io"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server answering in turn 200, 503 with Retry-After and 503 without, on kept
    /// connections, with the answer's bytes written in two parts.
    async fn server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let turn = Arc::new(AtomicU64::new(0));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let turn = turn.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut have = Vec::new();
                    loop {
                        let Ok(n) = s.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        have.extend_from_slice(&buf[..n]);
                        while let Some(end) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                            have.drain(..end + 4);
                            let answer: &[u8] = match turn.fetch_add(1, Ordering::Relaxed) % 3 {
                                0 => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
                                1 => b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 2\r\n\r\n{}",
                                _ => b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}",
                            };
                            let (a, b) = answer.split_at(answer.len() / 2);
                            if s.write_all(a).await.is_err() || s.write_all(b).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn the_open_loop_sends_what_its_schedule_holds_and_reads_every_answer() {
        let addr = server().await;
        let (addr, request) =
            Plan::get(&format!("http://{addr}/x?y=1"), &["A: b".into()]).expect("url");
        let mut report = run(Plan {
            addr,
            request,
            connections: 4,
            rate: Some(300.0),
            duration: Duration::from_millis(200),
            timeout: Duration::from_secs(5),
        })
        .await;
        // 300 a second for 0.2 s: slots 0..=59 are due before the end, every one is sent.
        assert_eq!(report.status.values().sum::<u64>(), 60, "{report:?}");
        assert_eq!(report.status.get(&200), Some(&20));
        assert_eq!(report.status.get(&503), Some(&40));
        assert_eq!(report.unavailable_without_retry_after, 20);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.ok_micros.len(), 20);
        assert_eq!(report.other_micros.len(), 40);
        let json = report.to_json();
        assert!(
            json.contains("\"status\":{\"200\":20,\"503\":40}"),
            "{json}"
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_counted_as_connect_errors_not_answers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let (addr, request) = Plan::get(&format!("http://{addr}/"), &[]).expect("url");
        let report = run(Plan {
            addr,
            request,
            connections: 2,
            rate: Some(100.0),
            duration: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
        })
        .await;
        assert!(report.status.is_empty());
        assert_eq!(
            report.errors.get("connect"),
            Some(&10),
            "{:?}",
            report.errors
        );
    }

    #[test]
    fn urls_and_headers_it_cannot_send_are_refused() {
        assert!(Plan::get("https://a:1/", &[]).is_err());
        assert!(Plan::get("http:///x", &[]).is_err());
        assert!(Plan::get("http://a:1/", &["no colon".into()]).is_err());
        let (addr, request) =
            Plan::get("http://a:1", &["Authorization: Bearer t".into()]).expect("url");
        assert_eq!(addr, "a:1");
        assert_eq!(
            request,
            b"GET / HTTP/1.1\r\nHost: a:1\r\nAuthorization: Bearer t\r\n\r\n"
        );
    }
}
