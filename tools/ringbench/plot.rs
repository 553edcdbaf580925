//! The latency-by-percentile chart as an SVG, HdrHistogram's plotter style: the x axis is
//! 1/(1-percentile) on a log scale (0%, 90%, 99%, 99.9%, ...), the y axis latency in ms.
//! Several runs (ringd and etcd) share one chart.

use std::fmt::Write;

use crate::report::Recorder;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 520.0;
const MARGIN_LEFT: f64 = 80.0;
const MARGIN_RIGHT: f64 = 30.0;
const MARGIN_TOP: f64 = 40.0;
const MARGIN_BOTTOM: f64 = 60.0;
const COLOURS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
/// The x axis ends at 99.999%: 1/(1-q) = 10^5.
const DECADES: f64 = 5.0;

/// (x in decades of 1/(1-q), latency in ms) along a recorder's distribution.
fn curve(recorder: &Recorder) -> Vec<(f64, f64)> {
    let mut points = Vec::new();
    for step in recorder.histogram.iter_quantiles(5) {
        let quantile = step.quantile_iterated_to().min(1.0 - 10f64.powf(-DECADES));
        let value = step.value_iterated_to().clamp(recorder.min_ns, recorder.max_ns.max(recorder.min_ns));
        points.push(((1.0 / (1.0 - quantile)).log10(), value as f64 / 1e6));
    }
    points
}

pub fn svg(runs: &[(String, &Recorder)], title: &str) -> String {
    let curves: Vec<Vec<(f64, f64)>> = runs.iter().map(|(_, recorder)| curve(recorder)).collect();
    let highest_ms = curves.iter().flatten().map(|&(_, y)| y).fold(0.0f64, f64::max).max(1e-3);
    let step_ms = nice_step(highest_ms / 5.0);
    let max_ms = (highest_ms / step_ms).ceil() * step_ms;
    let plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let x_of = |decades: f64| MARGIN_LEFT + decades.clamp(0.0, DECADES) / DECADES * plot_width;
    let y_of = |ms: f64| MARGIN_TOP + plot_height - ms / max_ms * plot_height;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        WIDTH / 2.0,
        escape(title)
    );
    for (decade, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"].iter().enumerate() {
        let x = x_of(decade as f64);
        let _ = writeln!(
            svg,
            "<line x1=\"{x}\" y1=\"{MARGIN_TOP}\" x2=\"{x}\" y2=\"{}\" stroke=\"#ddd\"/>",
            MARGIN_TOP + plot_height
        );
        let _ = writeln!(
            svg,
            "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
            MARGIN_TOP + plot_height + 18.0
        );
    }
    for tick in 0..=(max_ms / step_ms).round() as usize {
        let ms = step_ms * tick as f64;
        let y = y_of(ms);
        let _ = writeln!(
            svg,
            "<line x1=\"{MARGIN_LEFT}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#ddd\"/>",
            MARGIN_LEFT + plot_width
        );
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            MARGIN_LEFT - 6.0,
            y + 4.0,
            trim_number(ms)
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">percentile</text>",
        MARGIN_LEFT + plot_width / 2.0,
        HEIGHT - 15.0
    );
    let _ = writeln!(
        svg,
        "<text x=\"18\" y=\"{}\" transform=\"rotate(-90 18 {})\" text-anchor=\"middle\">latency (ms)</text>",
        HEIGHT / 2.0,
        HEIGHT / 2.0
    );
    for (index, ((name, _), points)) in runs.iter().zip(&curves).enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let path: Vec<String> = points.iter().map(|&(x, y)| format!("{:.1},{:.1}", x_of(x), y_of(y))).collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        // Top left: percentile curves rise to the right, so that corner stays clear.
        let legend_y = MARGIN_TOP + 14.0 + 18.0 * index as f64;
        let legend_x = MARGIN_LEFT + 12.0;
        let _ = writeln!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"212\" height=\"18\" fill=\"white\" fill-opacity=\"0.85\"/>",
            legend_x - 4.0,
            legend_y - 9.0
        );
        let _ = writeln!(svg, "<line x1=\"{legend_x}\" y1=\"{legend_y}\" x2=\"{}\" y2=\"{legend_y}\" stroke=\"{colour}\" stroke-width=\"3\"/>", legend_x + 24.0);
        let _ = writeln!(svg, "<text x=\"{}\" y=\"{}\">{}</text>", legend_x + 30.0, legend_y + 4.0, escape(name));
    }
    svg += "</svg>\n";
    svg
}

/// 1, 2 or 5 times a power of ten, at least `rough`.
fn nice_step(rough: f64) -> f64 {
    let power = 10f64.powf(rough.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * power).find(|step| *step >= rough).unwrap_or(10.0 * power)
}

fn trim_number(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
