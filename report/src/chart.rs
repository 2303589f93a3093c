//! The report's charts as SVG text, drawn here (no plotting library): bars per hour or per day,
//! and a heat grid of low-score cells. The same SVG goes into the PDF (typst's `image`) and the
//! HTML (inline). Every number is printed with fixed decimals, so the same figures give the same
//! bytes.

use std::fmt::Write;

use crate::figures::Cell;

const WIDTH: f64 = 640.0;
const FONT: &str = "Libertinus Serif, serif";

/// Escapes text for SVG and HTML.
pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A bar chart of `values` labelled `labels` (every `label_every`-th label printed), in `colour`.
pub(crate) fn bars(labels: &[String], values: &[i64], colour: &str, label_every: usize) -> String {
    let (height, left, bottom, top) = (180.0, 48.0, 24.0, 12.0);
    let max = values.iter().copied().max().unwrap_or(0).max(1);
    let step = nice_step(max);
    let ceiling = (max + step - 1) / step * step;
    let plot_w = WIDTH - left - 8.0;
    let plot_h = height - bottom - top;
    let slot = plot_w / values.len().max(1) as f64;
    let mut svg = header(WIDTH, height);
    let mut tick = 0;
    while tick <= ceiling {
        let y = top + plot_h * (1.0 - tick as f64 / ceiling as f64);
        let _ = write!(
            svg,
            r##"<line x1="{left:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#d0d7de" stroke-width="0.5"/><text x="{:.1}" y="{:.1}" font-size="9" text-anchor="end">{tick}</text>"##,
            WIDTH - 8.0,
            left - 4.0,
            y + 3.0
        );
        tick += step;
    }
    for (i, value) in values.iter().enumerate() {
        let h = plot_h * (*value as f64 / ceiling as f64);
        let x = left + slot * i as f64 + slot * 0.15;
        if h > 0.0 {
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{colour}"/>"#,
                top + plot_h - h,
                slot * 0.7
            );
        }
        if i % label_every.max(1) == 0
            && let Some(label) = labels.get(i)
        {
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{}</text>"#,
                x + slot * 0.35,
                height - 8.0,
                escape(label)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// A heat grid of `cells` (each `degrees` wide), merged into coarser squares when the area
/// spans more than 48 cells; darker is more low-score sightings. `None` without cells.
pub(crate) fn heat_grid(cells: &[Cell], degrees: f64) -> Option<String> {
    let index = |v: f64| (v / degrees).round() as i64;
    let (mut la0, mut la1, mut lo0, mut lo1) = (i64::MAX, i64::MIN, i64::MAX, i64::MIN);
    for c in cells {
        la0 = la0.min(index(c.lat));
        la1 = la1.max(index(c.lat));
        lo0 = lo0.min(index(c.lon));
        lo1 = lo1.max(index(c.lon));
    }
    if cells.is_empty() {
        return None;
    }
    let merge = ((la1 - la0 + 1).max(lo1 - lo0 + 1) as f64 / 48.0)
        .ceil()
        .max(1.0) as i64;
    let rows = (la1 - la0) / merge + 1;
    let cols = (lo1 - lo0) / merge + 1;
    let mut grid = vec![0i64; (rows * cols) as usize];
    for c in cells {
        let r = (index(c.lat) - la0) / merge;
        let k = (index(c.lon) - lo0) / merge;
        grid[(r * cols + k) as usize] += c.low;
    }
    let max = grid.iter().copied().max().unwrap_or(1).max(1);
    let (left, bottom) = (56.0, 28.0);
    let size = ((WIDTH - left - 8.0) / cols as f64).min(320.0 / rows as f64);
    let height = size * rows as f64 + bottom + 8.0;
    let mut svg = header(WIDTH, height);
    for r in 0..rows {
        for k in 0..cols {
            let n = grid[(r * cols + k) as usize];
            if n == 0 {
                continue;
            }
            // North up: row 0 (the southernmost) at the bottom.
            let y = 8.0 + size * (rows - 1 - r) as f64;
            let x = left + size * k as f64;
            let alpha = 0.15 + 0.85 * n as f64 / max as f64;
            let _ = write!(
                svg,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{size:.1}" height="{size:.1}" fill="#d7263d" fill-opacity="{alpha:.3}"/>"##
            );
        }
    }
    let span = degrees * merge as f64;
    let _ = write!(
        svg,
        r##"<rect x="{left:.1}" y="8" width="{:.1}" height="{:.1}" fill="none" stroke="#8a94a3" stroke-width="0.5"/>"##,
        size * cols as f64,
        size * rows as f64
    );
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="end">{:.2}</text><text x="{:.1}" y="16" font-size="9" text-anchor="end">{:.2}</text>"#,
        left - 4.0,
        8.0 + size * rows as f64,
        la0 as f64 * degrees,
        left - 4.0,
        (la1 + 1) as f64 * degrees,
    );
    let _ = write!(
        svg,
        r#"<text x="{left:.1}" y="{:.1}" font-size="9">{:.2}</text><text x="{:.1}" y="{:.1}" font-size="9" text-anchor="end">{:.2}</text><text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">squares of {span:.2}° · max {max}</text>"#,
        height - 14.0,
        lo0 as f64 * degrees,
        left + size * cols as f64,
        height - 14.0,
        (lo1 + 1) as f64 * degrees,
        left + size * cols as f64 / 2.0,
        height - 2.0,
    );
    svg.push_str("</svg>");
    Some(svg)
}

fn header(width: f64, height: f64) -> String {
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="{FONT}" fill="#24292f">"##
    )
}

/// A round step for about five grid lines up to `max`.
fn nice_step(max: i64) -> i64 {
    let raw = (max as f64 / 5.0).max(1.0);
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(raw);
    step as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(1), 1);
        assert_eq!(nice_step(23), 5);
        assert_eq!(nice_step(480), 100);
        assert_eq!(nice_step(12_345), 5000);
    }

    #[test]
    fn charts_are_deterministic_svg() {
        let labels: Vec<String> = (0..24).map(|h| format!("{h:02}:00")).collect();
        let values: Vec<i64> = (0..24).collect();
        let a = bars(&labels, &values, "#1f6feb", 3);
        assert_eq!(a, bars(&labels, &values, "#1f6feb", 3));
        assert!(a.starts_with("<svg") && a.ends_with("</svg>"));
        // One bar per hour but the first, whose value is 0.
        assert_eq!(a.matches("<rect").count(), 23);
        let cells = [
            Cell {
                lat: 48.85,
                lon: 2.35,
                low: 3,
            },
            Cell {
                lat: 48.87,
                lon: 2.30,
                low: 1,
            },
        ];
        let grid = heat_grid(&cells, 0.01).unwrap();
        assert_eq!(grid.matches("fill=\"#d7263d\"").count(), 2);
        assert!(heat_grid(&[], 0.01).is_none());
        assert_eq!(escape("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
    }
}
