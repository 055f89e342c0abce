//! Durations such as `30s`, `2m`, `500ms` or `1m30s`.
//!
//! One or more parts, each an integer followed by a unit: `ms`, `s`, `m`, `h` (as Go and
//! systemd write them); spaces between parts are allowed. A TOML integer is read as seconds by
//! the checker.

/// Why a duration could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("the duration is empty")]
    Empty,
    #[error("`{0}` has a number without a unit")]
    NoUnit(String),
    #[error("`{0}` is not a number followed by ms, s, m or h")]
    Malformed(String),
    #[error("`{0}` is too long")]
    TooLong(String),
}

/// The units accepted, for help texts.
pub const UNITS_HELP: &str =
    "write a number with a unit: ms, s, m or h, e.g. \"30s\", \"2m\" or \"1m30s\" (or an integer number of seconds)";

/// Parses a duration string into milliseconds.
pub fn parse_duration_ms(input: &str) -> Result<u64, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let too_long = || DurationError::TooLong(s.to_string());
    let mut rest = s;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(DurationError::Malformed(s.to_string()));
        }
        let number: u64 = rest[..digits].parse().map_err(|_| too_long())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "" if unit_len == rest.len() => return Err(DurationError::NoUnit(s.to_string())),
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(DurationError::Malformed(s.to_string())),
        };
        total = number
            .checked_mul(factor)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(too_long)?;
        rest = rest[unit_len..].trim_start();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_combinations() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms(" 2m "), Ok(120_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("1m 30s"), Ok(90_000));
    }

    #[test]
    fn bad_durations() {
        assert_eq!(parse_duration_ms(""), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration_ms("30"),
            Err(DurationError::NoUnit(_))
        ));
        assert!(matches!(
            parse_duration_ms("30sec"),
            Err(DurationError::Malformed(_))
        ));
        assert!(matches!(
            parse_duration_ms("-5s"),
            Err(DurationError::Malformed(_))
        ));
        assert!(matches!(
            parse_duration_ms("1.5s"),
            Err(DurationError::Malformed(_))
        ));
        assert!(matches!(
            parse_duration_ms("99999999999999999999h"),
            Err(DurationError::TooLong(_))
        ));
        assert!(matches!(
            parse_duration_ms("5000000000000000h"),
            Err(DurationError::TooLong(_))
        ));
    }
}
