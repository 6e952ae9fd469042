//! Quantities (`500m`, `64Mi`, `1e3`) as apimachinery's `resource.Quantity`:
//! exact to the nano unit (finer values round up, as upstream), compared and
//! summed exactly, and printed in upstream's canonical form (`1000m` is `1`,
//! `1024Mi` is `1Gi`, `0.5` is `500m`), which error messages show.

use std::cmp::Ordering;
use std::fmt;

const NANO: i128 = 1_000_000_000;

/// How a quantity prints: the family of its suffix when it was parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `m`, `k`, `M`, ... or no suffix.
    DecimalSi,
    /// `Ki`, `Mi`, `Gi`, ...
    BinarySi,
    /// `e3`, `E6`.
    DecimalExponent,
}

#[derive(Clone, Copy, Debug)]
pub struct Quantity {
    nanos: i128,
    format: Format,
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl Default for Quantity {
    fn default() -> Self {
        Self::ZERO
    }
}

fn pow(base: i128, exp: u32) -> Option<i128> {
    base.checked_pow(exp)
}

impl Quantity {
    pub const ZERO: Quantity = Quantity {
        nanos: 0,
        format: Format::DecimalSi,
    };

    /// A whole number of units (a count of objects).
    pub fn from_units(n: i64) -> Self {
        Self {
            nanos: i128::from(n) * NANO,
            format: Format::DecimalSi,
        }
    }

    /// Parses upstream's quantity syntax; `None` where upstream refuses it.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let (negative, rest) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(split);
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
            return None;
        }
        let mantissa: i128 = format!("{whole}{frac}").parse().ok()?;
        let frac_digits = i32::try_from(frac.len()).ok()?;
        let (binary, exp10, format) = match suffix {
            "Ki" => (10, 0, Format::BinarySi),
            "Mi" => (20, 0, Format::BinarySi),
            "Gi" => (30, 0, Format::BinarySi),
            "Ti" => (40, 0, Format::BinarySi),
            "Pi" => (50, 0, Format::BinarySi),
            "Ei" => (60, 0, Format::BinarySi),
            "n" => (0, -9, Format::DecimalSi),
            "u" => (0, -6, Format::DecimalSi),
            "m" => (0, -3, Format::DecimalSi),
            "" => (0, 0, Format::DecimalSi),
            "k" => (0, 3, Format::DecimalSi),
            "M" => (0, 6, Format::DecimalSi),
            "G" => (0, 9, Format::DecimalSi),
            "T" => (0, 12, Format::DecimalSi),
            "P" => (0, 15, Format::DecimalSi),
            "E" => (0, 18, Format::DecimalSi),
            s if s.starts_with(['e', 'E']) => {
                let e: i32 = s[1..].parse().ok()?;
                (0, e, Format::DecimalExponent)
            }
            _ => return None,
        };
        // value = mantissa * 2^binary * 10^(exp10 - frac_digits), in nanos.
        let exp = exp10 - frac_digits + 9;
        let mut numerator = mantissa.checked_mul(pow(2, binary)?)?;
        let mut denominator = 1i128;
        if exp >= 0 {
            numerator = numerator.checked_mul(pow(10, exp.unsigned_abs())?)?;
        } else {
            denominator = pow(10, exp.unsigned_abs())?;
        }
        // Finer than a nano unit rounds up, as upstream's parser.
        let nanos = (numerator + denominator - 1) / denominator;
        Some(Self {
            nanos: if negative { -nanos } else { nanos },
            format,
        })
    }

    /// The value in base units as a float, for arithmetic that may round.
    pub fn as_f64(&self) -> f64 {
        self.nanos as f64 / NANO as f64
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// The value in thousandths, rounded up (upstream's `MilliValue`).
    pub fn milli(&self) -> i128 {
        div_ceil(self.nanos, 1_000_000)
    }

    /// The value in units, rounded up (upstream's `Value`).
    pub fn value(&self) -> i128 {
        div_ceil(self.nanos, NANO)
    }

    /// The sum; it prints as `self` does unless `self` is zero (upstream's `Add`).
    pub fn add(&self, other: &Quantity) -> Quantity {
        Quantity {
            nanos: self.nanos + other.nanos,
            format: if self.is_zero() {
                other.format
            } else {
                self.format
            },
        }
    }

    pub fn sub(&self, other: &Quantity) -> Quantity {
        Quantity {
            nanos: self.nanos - other.nanos,
            format: self.format,
        }
    }
}

fn div_ceil(a: i128, b: i128) -> i128 {
    let q = a / b;
    if a % b > 0 { q + 1 } else { q }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        let abs = self.nanos.abs();
        let sign = if self.nanos < 0 { "-" } else { "" };
        // Binary only for whole numbers of at least 1024; otherwise upstream
        // falls back to decimal rather than round.
        if self.format == Format::BinarySi && abs >= 1024 * NANO && abs % NANO == 0 {
            let mut units = abs / NANO;
            let mut shift = 0;
            while shift < 60 && units % 1024 == 0 {
                units /= 1024;
                shift += 10;
            }
            let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][shift / 10];
            return write!(f, "{sign}{units}{suffix}");
        }
        let mut mantissa = abs;
        let mut exp = -9;
        while exp < 18 && mantissa % 1000 == 0 {
            mantissa /= 1000;
            exp += 3;
        }
        let suffix = match (self.format, exp) {
            (Format::DecimalExponent, 0) => String::new(),
            (Format::DecimalExponent, e) => format!("e{e}"),
            (_, e) => {
                ["n", "u", "m", "", "k", "M", "G", "T", "P", "E"][((e + 9) / 3) as usize].to_owned()
            }
        };
        write!(f, "{sign}{mantissa}{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|| panic!("{s} parses"))
    }

    #[test]
    fn prints_canonically_as_upstream() {
        for (input, printed) in [
            ("500m", "500m"),
            ("0.5", "500m"),
            ("1000m", "1"),
            ("1500m", "1500m"),
            ("1.5", "1500m"),
            ("2", "2"),
            ("1000", "1k"),
            ("1500", "1500"),
            ("1024Mi", "1Gi"),
            ("1536Mi", "1536Mi"),
            ("512", "512"),
            ("1Ki", "1Ki"),
            ("0.5Ki", "512"),
            ("1e3", "1e3"),
            ("100M", "100M"),
            ("0", "0"),
            ("0Mi", "0"),
            ("1n", "1n"),
            ("0.1n", "1n"),
            ("-2", "-2"),
        ] {
            assert_eq!(q(input).to_string(), printed, "{input}");
        }
    }

    #[test]
    fn compares_and_sums_exactly() {
        assert_eq!(q("1"), q("1000m"));
        assert!(q("50m") < q("100m"));
        assert!(q("1Gi") > q("1G"));
        assert_eq!(q("500m").add(&q("500m")).to_string(), "1");
        assert_eq!(Quantity::ZERO.add(&q("1Gi")).to_string(), "1Gi");
        assert_eq!(q("1").sub(&q("250m")).to_string(), "750m");
        assert_eq!(q("1.5").milli(), 1500);
        assert_eq!(q("1500m").value(), 2);
    }

    #[test]
    fn refuses_what_upstream_refuses() {
        for bad in ["", "m", "1x", "1.2.3", "--1", "1 Mi", "abc"] {
            assert!(Quantity::parse(bad).is_none(), "{bad}");
        }
    }
}
