//! PNG charts of benchmark results, written next to their CSV files.
//!
//! Text needs a TrueType font, loaded at run time from [`FONT_PATH`] (Debian package
//! `fonts-dejavu-core`). Without it, or if drawing fails, a chart is skipped with a
//! warning: plots never make a benchmark fail.
//!
//! Log axes are drawn by plotting `log10` of the values on a linear axis whose labels
//! show the original values.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

/// The font every chart uses.
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (960, 600);
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Titles and axes of a chart.
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub log_x: bool,
    pub log_y: bool,
}

/// A named line of (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A named set of bars, one value per group (NaN: no bar).
pub struct Bars {
    pub name: String,
    pub values: Vec<f64>,
}

/// One bar series per system that has any value, one bar per group: `value(system,
/// group)`, NaN where it has none.
pub fn bars_by_system(
    systems: &[&str],
    groups: &[&str],
    value: impl Fn(&str, &str) -> Option<f64>,
) -> Vec<Bars> {
    systems
        .iter()
        .filter(|system| groups.iter().any(|g| value(system, g).is_some()))
        .map(|system| Bars {
            name: system.to_string(),
            values: groups
                .iter()
                .map(|g| value(system, g).unwrap_or(f64::NAN))
                .collect(),
        })
        .collect()
}

/// Register the font once; false (with a warning) if it cannot be loaded.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let bytes = match std::fs::read(FONT_PATH) {
            Ok(b) => b,
            Err(e) => {
                eprintln!(
                    "warning: no charts: cannot read the font {FONT_PATH} ({e}); apt-get install -y fonts-dejavu-core"
                );
                return false;
            }
        };
        // plotters keeps registered fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        match plotters::style::register_font(FONT, FontStyle::Normal, bytes) {
            Ok(()) => true,
            Err(_) => {
                eprintln!("warning: no charts: {FONT_PATH} is not a usable TrueType font");
                false
            }
        }
    })
}

fn scale(v: f64, log: bool) -> Option<f64> {
    if !v.is_finite() || (log && v <= 0.0) {
        None
    } else if log {
        Some(v.log10())
    } else {
        Some(v)
    }
}

/// An axis label: the value itself, or `10^v` on a log axis (whole powers of ten
/// only), to 2-3 significant digits.
fn tick(v: f64, log: bool) -> String {
    if log && (v - v.round()).abs() > 1e-6 {
        return String::new();
    }
    let x = if log { 10f64.powf(v.round()) } else { v };
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1e6 {
        let m = format!("{:.3}", x / 1e6);
        format!("{}M", m.trim_end_matches('0').trim_end_matches('.'))
    } else if a >= 1e4 {
        format!("{:.0}k", x / 1e3)
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 0.01 {
        let digits = if a >= 1.0 { 1 } else { 2 };
        format!("{x:.digits$}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        format!("{x:.1e}")
    }
}

fn span(values: impl Iterator<Item = f64>, pad_low: bool) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return None;
    }
    if !pad_low {
        return Some((lo, hi));
    }
    let pad = ((hi - lo) * 0.08).max(0.05 * hi.abs().max(1e-9));
    Some((lo - pad, hi + pad))
}

/// The corner of the plot with the fewest points near it, for the legend.
fn emptiest_corner(
    data: &[Vec<(f64, f64)>],
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> SeriesLabelPosition {
    let near = |left: bool, top: bool| {
        data.iter()
            .flatten()
            .filter(|(x, y)| {
                let fx = (x - x0) / (x1 - x0);
                let fy = (y - y0) / (y1 - y0);
                (if left { fx < 0.45 } else { fx > 0.55 })
                    && (if top { fy > 0.6 } else { fy < 0.4 })
            })
            .count()
    };
    [
        (near(true, true), SeriesLabelPosition::UpperLeft),
        (near(false, true), SeriesLabelPosition::UpperRight),
        (near(false, false), SeriesLabelPosition::LowerRight),
        (near(true, false), SeriesLabelPosition::LowerLeft),
    ]
    .into_iter()
    .min_by_key(|(n, _)| *n)
    .map_or(SeriesLabelPosition::UpperLeft, |(_, p)| p)
}

/// The range of an axis and its number of labels: whole decades on a log axis.
fn axis(lo: f64, hi: f64, log: bool) -> (f64, f64, usize) {
    if log {
        let (a, b) = (lo.floor(), hi.ceil().max(lo.floor() + 1.0));
        (a, b, (b - a) as usize + 1)
    } else {
        (lo, hi, 10)
    }
}

fn report(path: &Path, r: Result<(), String>) {
    match r {
        Ok(()) => eprintln!("wrote {}", path.display()),
        Err(e) => eprintln!("warning: chart {} skipped: {e}", path.display()),
    }
}

/// A line chart with markers, one line per series.
pub fn lines(path: &Path, c: &Chart, series: &[Series]) {
    if font_ready() {
        report(path, draw_lines(path, c, series));
    }
}

fn draw_lines(path: &Path, c: &Chart, series: &[Series]) -> Result<(), String> {
    let data: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .filter_map(|&(x, y)| Some((scale(x, c.log_x)?, scale(y, c.log_y)?)))
                .collect()
        })
        .collect();
    let all = || data.iter().flatten();
    let (x0, x1) = span(all().map(|p| p.0), !c.log_x).ok_or("no data")?;
    let (y0, y1) = span(all().map(|p| p.1), !c.log_y).ok_or("no data")?;
    let y0 = if c.log_y { y0 } else { y0.min(0.0) };
    let (x0, x1, nx) = axis(x0, x1, c.log_x);
    let (y0, y1, ny) = axis(y0, y1, c.log_y);
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(c.title, (FONT, 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(e)?;
    let (lx, ly) = (c.log_x, c.log_y);
    let fx = move |v: &f64| tick(*v, lx);
    let fy = move |v: &f64| tick(*v, ly);
    chart
        .configure_mesh()
        .x_labels(nx)
        .y_labels(ny)
        .x_desc(c.x_label)
        .y_desc(c.y_label)
        .x_label_formatter(&fx)
        .y_label_formatter(&fy)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(e)?;
    // Earlier series are drawn wider, so that a line hidden under a later one with the
    // same values still shows as its outline.
    let n = series.len();
    for (i, (s, pts)) in series.iter().zip(&data).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let wider = (n - 1 - i).min(3) as u32;
        chart
            .draw_series(LineSeries::new(
                pts.clone(),
                color.stroke_width(2 + 2 * wider),
            ))
            .map_err(e)?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        let radius = 4 + 2 * wider;
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, radius, color.filled())))
            .map_err(e)?;
    }
    let corner = emptiest_corner(&data, (x0, x1), (y0, y1));
    chart
        .configure_series_labels()
        .position(corner)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 15))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)
}

/// A grouped bar chart: one group per entry of `groups`, one bar per series in each.
pub fn bars(path: &Path, c: &Chart, groups: &[String], series: &[Bars]) {
    if font_ready() {
        report(path, draw_bars(path, c, groups, series));
    }
}

fn draw_bars(path: &Path, c: &Chart, groups: &[String], series: &[Bars]) -> Result<(), String> {
    let values = || {
        series
            .iter()
            .flat_map(|s| s.values.iter())
            .filter_map(|&v| scale(v, c.log_y))
    };
    let (lo, hi) = span(values(), false).ok_or("no data")?;
    let (y0, y1, ny) = if c.log_y {
        // Room above the tallest bar for the legend.
        axis(lo, hi + 0.9, true)
    } else {
        (0.0, hi * 1.25, 10)
    };
    let n = groups.len();
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(c.title, (FONT, 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5..(n as f64 - 0.5), y0..y1)
        .map_err(e)?;
    let ly = c.log_y;
    let fy = move |v: &f64| tick(*v, ly);
    let fx = |v: &f64| {
        let i = v.round();
        if (v - i).abs() < 0.01 && i >= 0.0 && (i as usize) < n {
            groups[i as usize].clone()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n + 1)
        .y_labels(ny)
        .x_label_formatter(&fx)
        .y_label_formatter(&fy)
        .x_desc(c.x_label)
        .y_desc(c.y_label)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(e)?;
    let k = series.len().max(1) as f64;
    let width = 0.8 / k;
    for (j, s) in series.iter().enumerate() {
        let color = COLORS[j % COLORS.len()];
        let mut rects = Vec::new();
        let mut labels = Vec::new();
        for (i, &v) in s.values.iter().enumerate().take(n) {
            let Some(top) = scale(v, c.log_y) else {
                continue;
            };
            let x = i as f64 - 0.4 + width * j as f64;
            rects.push(Rectangle::new(
                [(x + width * 0.05, y0), (x + width * 0.95, top)],
                color.filled(),
            ));
            labels.push(Text::new(
                tick(v, false),
                (x + width * 0.1, top + (y1 - y0) * 0.03),
                (FONT, 13).into_font(),
            ));
        }
        chart
            .draw_series(rects)
            .map_err(e)?
            .label(s.name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], color.filled()));
        chart.draw_series(labels).map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 15))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)
}
