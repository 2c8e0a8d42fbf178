//! Go's `time.ParseDuration`, error texts included: Consul parses check intervals and
//! `?wait=` with it, and its 400 bodies quote those errors verbatim.

use std::time::Duration;

/// A parsed Go duration; negative values are kept apart because `Duration` cannot hold them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoDuration {
    NonNegative(Duration),
    Negative,
}

impl GoDuration {
    /// Zero for negatives: what a wait or interval of "-1s" amounts to.
    pub fn or_zero(self) -> Duration {
        match self {
            Self::NonNegative(d) => d,
            Self::Negative => Duration::ZERO,
        }
    }
}

fn quote(s: &str) -> String {
    format!("{s:?}")
}

/// Parses `s` like Go; the error is Go's message, e.g. `time: missing unit in duration "1"`.
pub fn parse(s: &str) -> Result<GoDuration, String> {
    let orig = s;
    let invalid = || format!("time: invalid duration {}", quote(orig));
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(GoDuration::NonNegative(Duration::ZERO));
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total_nanos: f64 = 0.0;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..digits_end];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(invalid());
        }
        let value: f64 = number.parse().map_err(|_| invalid())?;
        rest = &rest[digits_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let scale = match unit {
            "" => return Err(format!("time: missing unit in duration {}", quote(orig))),
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            other => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    quote(other),
                    quote(orig)
                ));
            }
        };
        total_nanos += value * scale;
    }
    if negative && total_nanos > 0.0 {
        return Ok(GoDuration::Negative);
    }
    Ok(GoDuration::NonNegative(Duration::from_nanos(
        total_nanos as u64,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_go() {
        let d = |s| parse(s).map(GoDuration::or_zero);
        assert_eq!(d("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(d("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(d("2m30s"), Ok(Duration::from_secs(150)));
        assert_eq!(d("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(d("0"), Ok(Duration::ZERO));
        assert_eq!(parse("-1s"), Ok(GoDuration::Negative));
    }

    #[test]
    fn errors_quote_go_messages() {
        assert_eq!(
            parse("1 sec"),
            Err(r#"time: unknown unit " sec" in duration "1 sec""#.into())
        );
        assert_eq!(
            parse("1"),
            Err(r#"time: missing unit in duration "1""#.into())
        );
        assert_eq!(parse("xx"), Err(r#"time: invalid duration "xx""#.into()));
        assert_eq!(parse("abc"), Err(r#"time: invalid duration "abc""#.into()));
    }
}
