//! Time: the bound on every duration steward accepts, arithmetic that cannot overflow,
//! and formatting that cannot fail.
//!
//! Every duration that enters (a configuration value, a job's delay or timeout, a CLI
//! argument) is refused above [`MAX_DURATION`], 100 years: nothing meant seriously is
//! longer, and every deadline computed from such a value stays far inside what `Instant`
//! and RFC 3339 can represent. Values stored before that bound existed are capped when
//! read, and [`after`] caps whatever else reaches it, so no input can make the daemon
//! panic.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The longest duration accepted anywhere: 100 years (of 365.25 days, as `"100y"` means).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// How [`MAX_DURATION`] reads in messages.
pub const MAX_DURATION_TEXT: &str = "100 years";

/// The last instant RFC 3339 can write with four digits: 9999-12-31T23:59:59.999Z.
const LAST_MS: i64 = 253_402_300_799_999;

/// `d` if it is at most [`MAX_DURATION`], else a message saying what is allowed.
pub fn bounded(d: Duration) -> Result<Duration, String> {
    if d > MAX_DURATION {
        Err(format!(
            "is too long: durations are at most {MAX_DURATION_TEXT}"
        ))
    } else {
        Ok(d)
    }
}

/// `t + d`, with `d` capped at [`MAX_DURATION`]; never panics.
pub fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d.min(MAX_DURATION))
        .or_else(|| t.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(t)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `ms` (since the epoch) plus `d`, saturating.
pub fn ms_after(ms: i64, d: Duration) -> i64 {
    ms.saturating_add(i64::try_from(d.min(MAX_DURATION).as_millis()).unwrap_or(i64::MAX))
}

/// An RFC 3339 time (`2026-12-03T10:00:00Z`, also with a fraction or without the `Z`)
/// as ms since the epoch; `None` if it is not one or is before 1970.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(text.trim()).ok()?;
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// RFC 3339 with milliseconds, clamped to 1970 … 9999.
pub fn rfc3339_ms(ms: i64) -> String {
    let ms = ms.clamp(0, LAST_MS);
    let t = UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs());
    humantime::format_rfc3339_millis(t).to_string()
}

/// RFC 3339 to the second, clamped to 1970 … 9999.
pub fn rfc3339_secs(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
        .clamp(0, LAST_MS);
    let t = UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs());
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `min(max, initial × multiplier^(n-1))` for n ≥ 1 (n = 0 counts as 1).
pub fn exponential(initial: Duration, max: Duration, multiplier: f64, n: u32) -> Duration {
    let n = n.max(1);
    let factor = multiplier.powi((n - 1).min(1024) as i32);
    let secs = initial.as_secs_f64() * factor;
    if !secs.is_finite() || secs >= max.as_secs_f64() {
        max
    } else {
        Duration::from_secs_f64(secs).min(max)
    }
}

/// Adds up to `jitter × base` to `base`; `random` is uniform in [0, 1). Never less than base.
pub fn with_jitter(base: Duration, jitter: f64, random: f64) -> Duration {
    let r = random.clamp(0.0, 1.0);
    let extra = base.as_secs_f64() * jitter.max(0.0) * r;
    base + Duration::from_secs_f64(if extra.is_finite() { extra } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_100_years_and_humantime_agrees() {
        assert_eq!(humantime::parse_duration("100y").unwrap(), MAX_DURATION);
        assert!(bounded(MAX_DURATION).is_ok());
        let e = bounded(MAX_DURATION + Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("at most 100 years"), "{e}");
    }

    #[test]
    fn arithmetic_saturates() {
        let t = Instant::now();
        assert_eq!(after(t, Duration::from_secs(5)), t + Duration::from_secs(5));
        assert_eq!(after(t, Duration::MAX), t + MAX_DURATION);
        assert_eq!(ms_after(i64::MAX - 5, Duration::from_secs(1)), i64::MAX);
        assert_eq!(ms_after(1000, Duration::from_millis(500)), 1500);
    }

    #[test]
    fn formatting_never_fails() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(
            parse_rfc3339_ms("2026-12-03T10:00:00Z"),
            Some(1_796_292_000_000)
        );
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        assert_eq!(rfc3339_ms(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(LAST_MS + 1), "9999-12-31T23:59:59.999Z");
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(rfc3339_secs(far), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339_secs(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
