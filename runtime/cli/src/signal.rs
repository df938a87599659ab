//! Signal names and numbers as callers spell them: `15`, `TERM`, `SIGTERM`,
//! `sigterm`, `RTMIN+3`.

use std::str::FromStr;

use nix::sys::signal::Signal;

pub fn parse(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        return if (0..=libc::SIGRTMAX()).contains(&n) {
            Ok(n)
        } else {
            Err(format!("invalid signal {s:?}"))
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(rest) = name.strip_prefix("RTMIN") {
        let off: i32 = if rest.is_empty() {
            0
        } else {
            rest.parse().map_err(|_| format!("invalid signal {s:?}"))?
        };
        let n = libc::SIGRTMIN() + off;
        if n <= libc::SIGRTMAX() && off >= 0 {
            return Ok(n);
        }
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        let off: i32 = if rest.is_empty() {
            0
        } else {
            rest.parse().map_err(|_| format!("invalid signal {s:?}"))?
        };
        let n = libc::SIGRTMAX() + off;
        if n >= libc::SIGRTMIN() && off <= 0 {
            return Ok(n);
        }
    }
    Signal::from_str(&format!("SIG{name}"))
        .map(|s| s as i32)
        .map_err(|_| format!("invalid signal {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        for s in ["15", "TERM", "SIGTERM", "sigterm", "term"] {
            assert_eq!(parse(s).unwrap(), 15, "{s}");
        }
        assert_eq!(parse("KILL").unwrap(), 9);
        assert_eq!(parse("RTMIN+1").unwrap(), libc::SIGRTMIN() + 1);
        assert!(parse("NOPE").is_err());
        assert_eq!(parse("0").unwrap(), 0);
        assert!(parse("-1").is_err());
        assert!(parse("999").is_err());
    }
}
