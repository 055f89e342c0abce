//! Sizes such as `2GiB`, `512MiB`, `1G` or `1073741824`.
//!
//! A number (integer or decimal, e.g. `1.5GiB`), optional spaces, then a unit. Units are
//! matched without regard to case:
//! - none or `B`: bytes;
//! - `K`, `KiB`, `M`, `MiB`, `G`, `GiB`, `T`, `TiB`: powers of 1024 (as docker and systemd read `1G`);
//! - `KB`, `MB`, `GB`, `TB`: powers of 1000 (SI).
//!
//! Fractions of a byte are dropped. The result must fit in 64 bits.

/// Why a size could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("the size is empty")]
    Empty,
    #[error("`{0}` does not start with a number")]
    NoNumber(String),
    #[error("`{0}` is not a known size unit")]
    UnknownUnit(String),
    #[error("`{0}` is too large")]
    TooLarge(String),
}

/// The units accepted after a number, for help texts.
pub const UNITS_HELP: &str =
    "write a number with a unit: B, K/KiB, M/MiB, G/GiB, T/TiB (powers of 1024) or KB, MB, GB, TB (powers of 1000), e.g. \"2GiB\" or \"512MiB\"";

/// Parses a size string into bytes.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(SizeError::Empty);
    }
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(number_end);
    let unit = unit.trim_start();
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(SizeError::NoNumber(s.to_string()));
    }
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(SizeError::UnknownUnit(unit.to_string())),
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let too_large = || SizeError::TooLarge(s.to_string());
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(too_large)?;
    // Fractional part: exact integer arithmetic on at most 18 digits.
    let frac = &frac[..frac.len().min(18)];
    if !frac.is_empty() {
        let digits: u128 = frac
            .parse()
            .map_err(|_| SizeError::NoNumber(s.to_string()))?;
        let scale = 10u128.pow(frac.len() as u32);
        let part = digits * multiplier as u128 / scale;
        bytes = bytes
            .checked_add(u64::try_from(part).map_err(|_| too_large())?)
            .ok_or_else(too_large)?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("1024B"), Ok(1024));
        assert_eq!(parse_size("64 K"), Ok(65536));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size(".5K"), Ok(512));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
    }

    #[test]
    fn rejects() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert!(matches!(parse_size("GiB"), Err(SizeError::NoNumber(_))));
        assert!(matches!(parse_size("-1G"), Err(SizeError::NoNumber(_))));
        assert!(matches!(parse_size("1.2.3G"), Err(SizeError::NoNumber(_))));
        assert!(matches!(
            parse_size("2 gigs"),
            Err(SizeError::UnknownUnit(_))
        ));
        assert!(matches!(parse_size("2Gi"), Err(SizeError::UnknownUnit(_))));
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(SizeError::TooLarge(_))
        ));
        assert!(matches!(
            parse_size("17179869184GiB"),
            Err(SizeError::TooLarge(_))
        ));
        assert!(matches!(
            parse_size("16777216TiB"),
            Err(SizeError::TooLarge(_))
        ));
    }
}
