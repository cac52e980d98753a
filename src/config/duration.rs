//! Durations in the configuration: `250ms`, `5s`, `2m`, `1h`.

use std::time::Duration;

/// Parse a duration such as `500ms`, `1.5s`, `2m`; a bare number is rejected so a unit is
/// never guessed.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let expected = || format!("expected a duration like 500ms, 5s, 2m or 1h, found `{s}`");
    let n: f64 = num.parse().map_err(|_| expected())?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(expected()),
    };
    if !secs.is_finite() || !(0.0..=31_536_000.0).contains(&secs) {
        return Err(expected());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("fast").is_err());
    }
}
