//! Small charts drawn on the server as inline SVG: horizontal bars, a
//! heatmap (confusion matrix) and a histogram. Every label is escaped and
//! every number is written by us, so the markup is safe to embed. Each chart
//! carries a `<title>` and `role="img"` with a text summary for screen readers.

use std::fmt::Write as _;

fn esc(s: &str) -> String {
    ammonia::clean_text(s)
}

/// Horizontal bars with values in `0..=max` (per-class accuracy).
pub fn bars(title: &str, items: &[(String, f64)], max: f64, format: fn(f64) -> String) -> String {
    let row = 26.0;
    let label_w = 120.0;
    let bar_w = 260.0;
    let h = row * items.len() as f64 + 8.0;
    let mut svg = format!(
        "<svg class=\"chart bars\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>",
        w = label_w + bar_w + 70.0,
        t = esc(title)
    );
    for (i, (label, v)) in items.iter().enumerate() {
        let y = 4.0 + row * i as f64;
        let frac = if max > 0.0 {
            (v / max).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let _ = write!(
            svg,
            "<text x=\"{lx}\" y=\"{ty}\" text-anchor=\"end\">{label}</text>\
             <rect class=\"track\" x=\"{bx}\" y=\"{y}\" width=\"{bar_w}\" height=\"18\" rx=\"3\"/>\
             <rect class=\"bar\" x=\"{bx}\" y=\"{y}\" width=\"{bw:.1}\" height=\"18\" rx=\"3\"/>\
             <text x=\"{vx}\" y=\"{ty}\">{value}</text>",
            lx = label_w - 8.0,
            ty = y + 14.0,
            label = esc(label),
            bx = label_w,
            bw = frac * bar_w,
            vx = label_w + bar_w + 6.0,
            value = esc(&format(*v)),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A heatmap of counts, rows × columns, with labels (a confusion matrix:
/// rows are the true class, columns the predicted one).
pub fn heatmap(title: &str, labels: &[String], counts: &[Vec<u32>]) -> String {
    let n = counts.len();
    let cell = 44.0;
    let left = 110.0;
    let top = 96.0;
    // Room on the right for the last column's slanted label.
    let w = left + cell * n as f64 + 60.0;
    let h = top + cell * n as f64 + 8.0;
    let max = counts.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
    let label = |i: usize| labels.get(i).cloned().unwrap_or_else(|| i.to_string());
    let mut svg = format!(
        "<svg class=\"chart heatmap\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>",
        t = esc(title)
    );
    for j in 0..n {
        let x = left + cell * j as f64 + cell / 2.0;
        let _ = write!(
            svg,
            "<text class=\"col\" transform=\"translate({x},{y}) rotate(-45)\">{}</text>",
            esc(&label(j)),
            y = top - 8.0
        );
    }
    for (i, row) in counts.iter().enumerate() {
        let y = top + cell * i as f64;
        let _ = write!(
            svg,
            "<text x=\"{x}\" y=\"{ty}\" text-anchor=\"end\">{}</text>",
            esc(&label(i)),
            x = left - 8.0,
            ty = y + cell / 2.0 + 5.0
        );
        for (j, &c) in row.iter().enumerate().take(n) {
            let x = left + cell * j as f64;
            let alpha = 0.08 + 0.92 * (f64::from(c) / max);
            let class = if i == j { "cell diag" } else { "cell" };
            let _ = write!(
                svg,
                "<rect class=\"{class}\" x=\"{x}\" y=\"{y}\" width=\"{s}\" height=\"{s}\" fill-opacity=\"{alpha:.3}\"><title>true {t}, predicted {p}: {c}</title></rect>\
                 <text class=\"count{dark}\" x=\"{tx}\" y=\"{ty}\" text-anchor=\"middle\">{c}</text>",
                s = cell - 2.0,
                t = esc(&label(i)),
                p = esc(&label(j)),
                dark = if alpha > 0.55 { " on-dark" } else { "" },
                tx = x + cell / 2.0 - 1.0,
                ty = y + cell / 2.0 + 4.0,
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// A histogram of values in `lo..=hi` in `bins` bins (score distributions).
pub fn histogram(title: &str, values: &[f64], lo: f64, hi: f64, bins: usize) -> String {
    let bins = bins.max(1);
    let mut counts = vec![0u32; bins];
    for v in values.iter().filter(|v| v.is_finite()) {
        let f = if hi > lo { (v - lo) / (hi - lo) } else { 0.0 };
        let b = ((f * bins as f64).floor() as isize).clamp(0, bins as isize - 1) as usize;
        counts[b] += 1;
    }
    let (w, h, left, bottom) = (420.0, 160.0, 30.0, 22.0);
    let max = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let bw = (w - left) / bins as f64;
    let mut svg = format!(
        "<svg class=\"chart histogram\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>",
        t = esc(title)
    );
    for (i, &c) in counts.iter().enumerate() {
        let bh = (h - bottom - 8.0) * f64::from(c) / max;
        let x = left + bw * i as f64;
        let from = lo + (hi - lo) * i as f64 / bins as f64;
        let to = lo + (hi - lo) * (i + 1) as f64 / bins as f64;
        let _ = write!(
            svg,
            "<rect class=\"bar\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bw1:.1}\" height=\"{bh:.1}\"><title>{from:.0}–{to:.0}: {c}</title></rect>",
            y = h - bottom - bh,
            bw1 = bw - 2.0,
        );
        if c > 0 {
            let _ = write!(
                svg,
                "<text x=\"{tx:.1}\" y=\"{ty:.1}\" text-anchor=\"middle\">{c}</text>",
                tx = x + bw / 2.0,
                ty = h - bottom - bh - 3.0
            );
        }
    }
    let _ = write!(
        svg,
        "<text x=\"{left}\" y=\"{y}\">{lo:.0}</text><text x=\"{w}\" y=\"{y}\" text-anchor=\"end\">{hi:.0}</text></svg>",
        y = h - 6.0
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        let svg = bars("t", &[("<script>".into(), 0.5)], 1.0, |v| format!("{v}"));
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;"));
    }

    #[test]
    fn heatmap_has_a_cell_per_count() {
        let svg = heatmap(
            "confusion",
            &["a".into(), "b".into()],
            &[vec![5, 1], vec![0, 7]],
        );
        assert_eq!(svg.matches("<rect").count(), 4);
        assert!(svg.contains("true a, predicted b: 1"));
    }

    #[test]
    fn histogram_counts_every_value() {
        let svg = histogram("scores", &[0.0, 10.0, 55.0, 100.0, 100.0], 0.0, 100.0, 10);
        // 100 falls in the last bin with 99.
        assert!(svg.contains("90–100: 2"), "{svg}");
        assert!(svg.contains("0–10: 1"), "{svg}");
    }
}
