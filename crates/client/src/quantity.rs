//! Resource quantities (`500m`, `64Mi`, `1G`) as plain numbers, for the
//! arithmetic where rounding does not matter (scores, rates, cgroup
//! limits). Parsed by kubox-quota's exact parser, so every component reads
//! a quantity the same way.

/// A quantity in base units: `500m` is 0.5, `64Mi` is 67108864.
pub fn parse(q: &str) -> Option<f64> {
    kubox_quota::Quantity::parse(q).map(|q| q.as_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_scale() {
        assert_eq!(parse("500m"), Some(0.5));
        assert_eq!(parse("1500000000n"), Some(1.5));
        assert_eq!(parse("2"), Some(2.0));
        assert_eq!(parse("64Mi"), Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(parse("1G"), Some(1e9));
        assert_eq!(parse("1e3"), Some(1000.0));
        assert_eq!(parse("1x"), None);
    }
}
