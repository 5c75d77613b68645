//! Metric charts as SVG drawn on the server: no chart library to vendor, nothing to build, and
//! the browser receives at most `2 x buckets` points per series whatever the series' length
//! (min/max downsampling: each of `buckets` equal slices of the x range keeps its lowest and
//! highest point, in x order, so spikes survive). `app.js` adds hover values and drag-to-zoom
//! (a zoom is a new page with `xmin`/`xmax`, downsampled again on the server).

use std::fmt::Write as _;

use super::html::esc;

/// One line of a chart: points sorted by x.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// At most `2 * buckets` of `points` (sorted by x): the min and max of each x slice.
pub fn downsample(points: &[(f64, f64)], buckets: usize) -> Vec<(f64, f64)> {
    if points.len() <= 2 * buckets || buckets == 0 {
        return points.to_vec();
    }
    let (x0, x1) = (points[0].0, points[points.len() - 1].0);
    let span = (x1 - x0).max(f64::MIN_POSITIVE);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a bucket index from a fraction"
    )]
    let bucket = |x: f64| {
        (((x - x0) / span) * buckets as f64)
            .floor()
            .min(buckets as f64 - 1.0) as usize
    };
    let mut out = Vec::with_capacity(2 * buckets);
    let mut i = 0;
    while i < points.len() {
        let b = bucket(points[i].0);
        let (mut lo, mut hi) = (i, i);
        while i < points.len() && bucket(points[i].0) == b {
            if points[i].1 < points[lo].1 {
                lo = i;
            }
            if points[i].1 > points[hi].1 {
                hi = i;
            }
            i += 1;
        }
        let (a, z) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        out.push(points[a]);
        if z != a {
            out.push(points[z]);
        }
    }
    out
}

const W: f64 = 640.0;
const H: f64 = 260.0;
const PAD_L: f64 = 56.0;
const PAD_R: f64 = 12.0;
const PAD_T: f64 = 12.0;
const PAD_B: f64 = 28.0;

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e5 || v.abs() < 1e-3 {
        format!("{v:.2e}")
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// An SVG line chart of `series` (already downsampled). The `svg` element carries the data
/// ranges (`data-x0` ...) so that the page's script can turn a pointer position into values.
pub fn svg(title: &str, x_label: &str, series: &[Series]) -> String {
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 <= 0.0 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 <= 0.0 {
        y1 = y0 + 1.0;
    }
    let px = |x: f64| PAD_L + (x - x0) / (x1 - x0) * (W - PAD_L - PAD_R);
    let py = |y: f64| H - PAD_B - (y - y0) / (y1 - y0) * (H - PAD_T - PAD_B);
    let mut s = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\" \
         data-x0=\"{x0}\" data-x1=\"{x1}\" data-y0=\"{y0}\" data-y1=\"{y1}\" \
         data-left=\"{PAD_L}\" data-right=\"{}\" data-top=\"{PAD_T}\" data-bottom=\"{}\">",
        esc(title),
        W - PAD_R,
        H - PAD_B
    );
    // Axes and ticks.
    let _ = write!(
        s,
        "<line class=\"axis\" x1=\"{PAD_L}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>\
         <line class=\"axis\" x1=\"{PAD_L}\" y1=\"{PAD_T}\" x2=\"{PAD_L}\" y2=\"{}\"/>",
        H - PAD_B,
        W - PAD_R,
        H - PAD_B,
        H - PAD_B
    );
    for i in 0..=4 {
        let f = f64::from(i) / 4.0;
        let (xv, yv) = (x0 + f * (x1 - x0), y0 + f * (y1 - y0));
        let _ = write!(
            s,
            "<text class=\"tick\" x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
             <text class=\"tick\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            px(xv),
            H - 10.0,
            fmt_num(xv),
            PAD_L - 4.0,
            py(yv) + 4.0,
            fmt_num(yv)
        );
    }
    let _ = write!(
        s,
        "<text class=\"label\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
        W - PAD_R,
        H - 10.0 - 12.0,
        esc(x_label)
    );
    for (i, ser) in series.iter().enumerate() {
        let mut pts = String::with_capacity(ser.points.len() * 14);
        for &(x, y) in &ser.points {
            let _ = write!(pts, "{:.1},{:.1} ", px(x), py(y));
        }
        let _ = write!(
            s,
            "<polyline class=\"series s{}\" data-label=\"{}\" data-n=\"{}\" points=\"{}\"/>",
            i % 8,
            esc(&ser.label),
            ser.points.len(),
            pts.trim_end()
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::{Series, downsample, svg};

    #[test]
    fn downsampling_keeps_extremes_and_bounds_points() {
        let pts: Vec<(f64, f64)> = (0..1_000_000)
            .map(|i| (f64::from(i), f64::from(i % 1000)))
            .collect();
        let mut spiked = pts.clone();
        spiked[500_123].1 = 1e9;
        let d = downsample(&spiked, 1000);
        assert!(d.len() <= 2000, "{}", d.len());
        assert!(d.iter().any(|p| p.1 > 1e8), "the spike survives");
        assert!(d.windows(2).all(|w| w[0].0 <= w[1].0), "x order kept");
        assert_eq!(downsample(&pts[..10], 1000).len(), 10);
    }

    #[test]
    fn labels_are_escaped() {
        let s = svg(
            "<b>",
            "step",
            &[Series {
                label: "<script>".into(),
                points: vec![(0.0, 1.0), (1.0, 2.0)],
            }],
        );
        assert!(!s.contains("<script>") && !s.contains("<b>"));
        assert_eq!(s.matches("<polyline").count(), 1);
    }
}
