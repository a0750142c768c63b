//! Reading figures out of result lines and writing them as table cells.

use serde_json::Value as Json;

/// The number at a dotted `path` of run `r`.
pub(super) fn num(r: Option<&Json>, path: &str) -> Option<f64> {
    let mut v = r?;
    for key in path.split('.') {
        v = v.get(key)?;
    }
    v.as_f64()
}

/// Whether `key` of run `r` is true.
pub(super) fn flag(r: Option<&Json>, key: &str) -> bool {
    r.and_then(|r| r.get(key)).and_then(Json::as_bool) == Some(true)
}

/// A number as the report shows it: thousands separated from 100 up (and for whole
/// numbers), one decimal from 10, two below.
pub(super) fn fmt_n(x: f64) -> String {
    if x.abs() >= 100.0 || (x.fract() == 0.0 && x.abs() < 1e15) {
        let s = format!("{:.0}", x);
        // thousands separators
        let (sign, digits) = s.strip_prefix('-').map_or(("", &s[..]), |d| ("-", d));
        let mut out = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(ch);
        }
        format!("{sign}{out}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// A figure with its unit, or "n/a".
pub(super) fn cell(x: Option<f64>, unit: &str) -> String {
    match x {
        Some(x) => format!("{}{unit}", fmt_n(x)),
        None => "n/a".into(),
    }
}

/// Microseconds as milliseconds.
pub(super) fn ms(us: Option<f64>) -> Option<f64> {
    us.map(|u| u / 1000.0)
}

/// A value with `true` when it is only a lower bound (the phase timed out at that time).
pub(super) type Bounded = (Option<f64>, bool);

/// `key` of run `r`, as a lower bound (the time waited) when its phase timed out.
pub(super) fn bounded(r: Option<&Json>, key: &str) -> Bounded {
    let timed_out = match key {
        "connect_s" => flag(r, "connect_timed_out"),
        "settle_s" => {
            flag(r, "connect_timed_out")
                || flag(r, "settle_timed_out")
                || flag(r, "presence_stalled")
        }
        _ => false,
    };
    if timed_out {
        (num(r, "waited_s"), true)
    } else {
        (num(r, key), false)
    }
}
