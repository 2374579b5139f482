//! Durations on the command line: `90s`, `5m`, `1h30m`, or plain seconds.

use std::time::Duration;

/// Parses `90s`, `5m`, `1h30m`, `250ms` or `42` (seconds).
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("invalid duration {text:?}: expected a number"));
        }
        let (number, after) = rest.split_at(digits);
        let n: u64 = number
            .parse()
            .map_err(|e| format!("invalid duration {text:?}: {e}"))?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        total += match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            other => return Err(format!("invalid duration {text:?}: unknown unit {other:?}")),
        };
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_the_forms_kubectl_users_type() {
        let cases = [
            ("42", Some(42_000)),
            ("90s", Some(90_000)),
            ("5m", Some(300_000)),
            ("1h30m", Some(5_400_000)),
            ("250ms", Some(250)),
            ("", None),
            ("5x", None),
            ("m", None),
        ];
        for (text, want) in cases {
            assert_eq!(
                parse(text).ok().map(|d| d.as_millis() as u64),
                want,
                "{text:?}"
            );
        }
    }
}
