//! Kubernetes resource quantities as integers the extender can add and compare.
//!
//! Every quantity is held in milli-units (`"100m"` CPU = 100, `"1Gi"` memory =
//! 1,073,741,824,000), so CPU and memory share one representation and sums never round.

use std::collections::BTreeMap;

/// Resources by name (`cpu`, `memory`, `pods`, extended resources), in milli-units.
pub type Resources = BTreeMap<String, i128>;

/// Parses a quantity (`"250m"`, `"2"`, `"1.5Gi"`, `"1e3"`, `"512Mi"`) into milli-units,
/// rounding up a fraction of a milli-unit as the API server does.
pub fn parse_milli(quantity: &str) -> Result<i128, String> {
    let q = quantity.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    if number.is_empty() {
        return Err(format!("quantity {quantity:?} has no number"));
    }
    // (multiplier numerator, denominator) relative to milli-units.
    let (mul, div): (i128, i128) = match suffix {
        "" => (1000, 1),
        "m" => (1, 1),
        "u" => (1, 1000),
        "n" => (1, 1_000_000),
        "k" => (1_000_000, 1),
        "M" => (1_000_000_000, 1),
        "G" => (1_000_000_000_000, 1),
        "T" => (1_000_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000_000, 1),
        "Ki" => (1024 * 1000, 1),
        "Mi" => (1024 * 1024 * 1000, 1),
        "Gi" => (1024 * 1024 * 1024 * 1000, 1),
        "Ti" => (1024_i128.pow(4) * 1000, 1),
        "Pi" => (1024_i128.pow(5) * 1000, 1),
        "Ei" => (1024_i128.pow(6) * 1000, 1),
        s if s.starts_with(['e', 'E']) => {
            let exponent: u32 = s[1..]
                .parse()
                .map_err(|_| format!("quantity {quantity:?}: bad exponent"))?;
            (
                10_i128
                    .checked_pow(exponent)
                    .ok_or_else(|| format!("quantity {quantity:?} is too large"))?
                    * 1000,
                1,
            )
        }
        other => return Err(format!("quantity {quantity:?}: unknown suffix {other:?}")),
    };
    let negative = number.starts_with('-');
    let digits = number.trim_start_matches(['+', '-']);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let parse = |s: &str| -> Result<i128, String> {
        if s.is_empty() {
            Ok(0)
        } else {
            s.parse::<i128>()
                .map_err(|_| format!("quantity {quantity:?} is not a number"))
        }
    };
    let scale = 10_i128
        .checked_pow(u32::try_from(fraction.len()).unwrap_or(u32::MAX))
        .ok_or_else(|| format!("quantity {quantity:?} has too many decimals"))?;
    let value = parse(whole)?
        .checked_mul(scale)
        .and_then(|w| w.checked_add(parse(fraction).ok()?))
        .and_then(|v| v.checked_mul(mul))
        .ok_or_else(|| format!("quantity {quantity:?} is too large"))?;
    let denominator = scale * div;
    let milli = (value + denominator - 1) / denominator;
    Ok(if negative { -milli } else { milli })
}

/// Adds `b` into `a`, name by name.
pub fn add(a: &mut Resources, b: &Resources) {
    for (name, v) in b {
        *a.entry(name.clone()).or_default() += v;
    }
}

/// The larger of `a` and `b`, name by name.
pub fn max(a: &Resources, b: &Resources) -> Resources {
    let mut out = a.clone();
    for (name, v) in b {
        let e = out.entry(name.clone()).or_default();
        *e = (*e).max(*v);
    }
    out
}

/// A quantity in milli-units, written for people (`1500m`, `2Gi`, `3`).
pub fn show(name: &str, milli: i128) -> String {
    if name == "cpu" {
        return format!("{milli}m");
    }
    let units = milli / 1000;
    for (suffix, size) in [("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if units >= size && units % size == 0 {
            return format!("{}{suffix}", units / size);
        }
    }
    units.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_to_milli_units() {
        let cases = [
            ("100m", 100),
            ("1", 1000),
            ("1.5", 1500),
            ("0.1", 100),
            ("2k", 2_000_000),
            ("1Ki", 1_024_000),
            ("1Gi", 1_073_741_824_000),
            ("1.5Gi", 1_610_612_736_000),
            ("1e3", 1_000_000),
            ("1E3", 1_000_000),
            ("500u", 1),
            ("1n", 1),
            ("0", 0),
        ];
        for (q, want) in cases {
            assert_eq!(parse_milli(q), Ok(want), "{q}");
        }
        for bad in ["", "Gi", "1.2.3", "1Zi", "abc"] {
            assert!(parse_milli(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn quantities_show_for_people() {
        assert_eq!(show("cpu", 1500), "1500m");
        assert_eq!(show("memory", 2 * (1 << 30) * 1000), "2Gi");
        assert_eq!(show("pods", 3000), "3");
    }
}
