//! Durations as people write them in scenarios: `150ms`, `2s`, `1.5s`, `5m`, `250us`.

use std::time::Duration;

/// Parses a duration with a unit suffix (`us`, `ms`, `s`, `m`, `h`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?} has no unit; write it like 150ms, 2s or 5m"))?;
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let seconds = match unit.trim() {
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}; use us, ms, s, m or h"
            ));
        }
    };
    if !seconds.is_finite() || !(0.0..=7.0 * 86_400.0).contains(&seconds) {
        return Err(format!("{text:?} is out of range (0 to 7 days)"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A duration as a scenario would write it: `250us`, `150ms`, `2s`, `1.5s`, `25h`.
pub fn format_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us.is_multiple_of(3_600_000_000) && us > 0 {
        format!("{}h", us / 3_600_000_000)
    } else if us.is_multiple_of(60_000_000) && us > 0 {
        format!("{}m", us / 60_000_000)
    } else if us.is_multiple_of(1_000_000) {
        format!("{}s", us / 1_000_000)
    } else if us.is_multiple_of(1_000) {
        format!("{}ms", us / 1_000)
    } else if us >= 1_000_000 {
        format!("{}s", d.as_secs_f64())
    } else {
        format!("{us}us")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("150ms"), Ok(Duration::from_millis(150)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("3 weeks").is_err());
        for text in ["250us", "150ms", "2s", "1500ms", "5m", "25h"] {
            assert_eq!(format_duration(parse_duration(text).expect(text)), text);
        }
    }
}
