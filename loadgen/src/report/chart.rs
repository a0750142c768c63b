//! The report's latency chart (SVG), two panels: the CDF (latency on a log axis) and the
//! tail (percentile on a 1/(1-q) axis).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value as Json;

use super::Lookup;

/// A line per server and scenario: (latency ms, percentile) points.
type Series = Vec<(String, Vec<(f64, f64)>)>;

const COLORS: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0x7f, 0x7f, 0x7f),
];

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> String {
    e.to_string()
}

/// Draws both panels into `path` (a blank image when no run has latency points).
pub(super) fn draw(look: &Lookup, path: &Path) -> Result<(), String> {
    let series = series(look);
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    if series.is_empty() {
        return Ok(());
    }
    let (lo, hi) = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.0))
        .fold((f64::MAX, 0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let (lo, hi) = ((lo * 0.8).max(0.001), hi * 1.25);
    let (left, right) = root.split_horizontally(600);
    cdf(&left, &series, lo, hi)?;
    tail(&right, &series, lo, hi)?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// The delivery latency CDF of the fixed-rate, closed-loop and stream runs of both servers.
fn series(look: &Lookup) -> Series {
    let mut series: Series = Vec::new();
    for scenario in ["direct-rate", "direct-c64", "stream-100"] {
        for server in [look.ours, look.peer] {
            let Some(r) = look.get(server, scenario) else {
                continue;
            };
            let Some(points) = r.get("delivery_latency_cdf").and_then(Json::as_array) else {
                continue;
            };
            let pts: Vec<(f64, f64)> = points
                .iter()
                .filter_map(|p| Some((p.get(0)?.as_f64()? / 1000.0, p.get(1)?.as_f64()?)))
                .map(|(ms, q)| (ms.max(0.001), q))
                .collect();
            if !pts.is_empty() {
                series.push((format!("{server} {scenario}"), pts));
            }
        }
    }
    series
}

/// A panel's caption, margin and room for the axis labels.
fn panel<'a, 'b>(area: &'a Area<'b>, caption: &str) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50);
    builder
}

/// The CDF: latency (log) against the share of deliveries at or below it.
fn cdf(left: &Area, series: &Series, lo: f64, hi: f64) -> Result<(), String> {
    let mut chart = panel(left, "Delivery latency CDF")
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..100f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency, ms (log)")
        .y_desc("% of deliveries <= x")
        .draw()
        .map_err(err)?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// The tail: latency (log) by percentile, the axis stretched towards 100%.
fn tail(right: &Area, series: &Series, lo: f64, hi: f64) -> Result<(), String> {
    let tail = |q: f64| (-(1.0 - q / 100.0).max(1e-4).log10()).min(4.0);
    let mut chart = panel(right, "Tail: latency by percentile")
        .build_cartesian_2d(0f64..4f64, (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(5)
        .x_label_formatter(&|v| {
            let p = 100.0 - 100.0 * 10f64.powf(-v);
            format!("{}%", (p * 100.0).round() / 100.0)
        })
        .x_desc("percentile")
        .y_desc("latency, ms (log)")
        .draw()
        .map_err(err)?;
    for (i, (_, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|&(ms, q)| (tail(q), ms)),
                color.stroke_width(2),
            ))
            .map_err(err)?;
    }
    Ok(())
}
