//! Figures: stacked panels of line, bar or heatmap charts, drawn to PNG and SVG.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::Error;

pub(crate) const FONT: &str = "sans-serif";
static FONT_DATA: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

pub(crate) fn register_font() {
    REGISTER.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold, FontStyle::Italic, FontStyle::Oblique] {
            assert!(plotters::style::register_font(FONT, style, FONT_DATA).is_ok(), "the embedded font parses");
        }
    });
}

/// Okabe–Ito colours, black last.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),   // blue
    RGBColor(213, 94, 0),    // vermillion
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(230, 159, 0),   // orange
    RGBColor(86, 180, 233),  // sky blue
    RGBColor(240, 228, 66),  // yellow
    RGBColor(0, 0, 0),
];

/// One line of a line chart.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// What a panel shows.
#[derive(Clone, Debug)]
pub enum Plot {
    /// Lines over a numeric x axis; `categories` labels integer x positions instead.
    Lines { series: Vec<Series>, categories: Option<Vec<String>> },
    /// One bar per label.
    Bars { labels: Vec<String>, values: Vec<f64> },
    /// Cells `values[row][col]`, rows and columns labelled.
    Heatmap { rows: Vec<String>, cols: Vec<String>, values: Vec<Vec<f64>> },
}

#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub plot: Plot,
}

/// Draws `path` through a temporary file in the same directory (same extension, so the
/// backend picks the same format) renamed into place: a failed write (a full disk) leaves
/// no truncated image that looks complete.
pub(crate) fn write_atomic(path: &Path, draw: impl FnOnce(&Path) -> Result<(), String>) -> Result<(), Error> {
    let name = path.file_name().map_or_else(Default::default, |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".tmp.{name}"));
    let result = draw(&tmp).and_then(|()| std::fs::rename(&tmp, path).map_err(|e| e.to_string()));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| format!("{}: {e}", path.display()))
}

/// A figure: a title over panels laid out in a grid, `columns` wide.
#[derive(Clone, Debug)]
pub struct Figure {
    pub title: String,
    pub panels: Vec<Panel>,
    pub columns: usize,
}

impl Figure {
    /// Writes `base.png` and `base.svg`; returns both paths.
    pub fn save(&self, base: &Path) -> Result<Vec<PathBuf>, Error> {
        register_font();
        let rows = self.panels.len().div_ceil(self.columns.max(1)).max(1);
        let width = if self.columns <= 1 { 960 } else { 560 * self.columns as u32 + 40 };
        let size = (width, 340 * rows as u32 + 60);
        let png = base.with_extension("png");
        let svg = base.with_extension("svg");
        write_atomic(&png, |tmp| {
            let root = BitMapBackend::new(tmp, size).into_drawing_area();
            self.draw(&root).map_err(|e| e.to_string())?;
            root.present().map_err(|e| e.to_string())
        })?;
        write_atomic(&svg, |tmp| {
            let root = SVGBackend::new(tmp, size).into_drawing_area();
            self.draw(&root).map_err(|e| e.to_string())?;
            root.present().map_err(|e| e.to_string())
        })?;
        Ok(vec![png, svg])
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let body = root.titled(&self.title, (FONT, 24).into_font())?;
        let cols = self.columns.max(1);
        let rows = self.panels.len().div_ceil(cols).max(1);
        let areas = body.split_evenly((rows, cols));
        for (panel, area) in self.panels.iter().zip(areas.iter()) {
            draw_panel(panel, area)?;
        }
        Ok(())
    }
}

/// Axis bounds with a little headroom; a flat series still gets a visible range.
fn bounds(values: impl Iterator<Item = f64>, from_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if from_zero {
        lo = lo.min(0.0);
    }
    if hi - lo < 1e-9 {
        hi = lo + if lo.abs() > 1e-9 { lo.abs() * 0.1 } else { 1.0 };
    }
    (lo, hi + (hi - lo) * 0.08)
}

/// Short numbers for axis labels: 1.2M, 35k, 0.85.
pub fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn draw_panel<DB: DrawingBackend>(
    p: &Panel,
    area: &DrawingArea<DB, Shift>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let caption = (FONT, 18).into_font();
    let label_style = (FONT, 14).into_font();
    match &p.plot {
        Plot::Lines { series, categories } => {
            let (x0, x1) = bounds(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)), false);
            let (y0, y1) = bounds(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)), true);
            let (x0, x1) = if categories.is_some() { (x0 - 0.3, x1 + 0.3) } else { (x0, x1) };
            let mut chart = ChartBuilder::on(area)
                .caption(&p.title, caption)
                .margin(12)
                .x_label_area_size(44)
                .y_label_area_size(64)
                .build_cartesian_2d(x0..x1, y0..y1)?;
            let cats = categories.clone();
            let fmt_x = move |x: &f64| match &cats {
                Some(c) => {
                    let i = x.round();
                    if (x - i).abs() < 1e-6 && i >= 0.0 {
                        c.get(i as usize).cloned().unwrap_or_default()
                    } else {
                        String::new()
                    }
                }
                None => short(*x),
            };
            let mut mesh = chart.configure_mesh();
            mesh.x_desc(&p.x_label)
                .y_desc(&p.y_label)
                .label_style(label_style.clone())
                .x_label_formatter(&fmt_x)
                .y_label_formatter(&|y| short(*y));
            if let Some(c) = categories {
                mesh.x_labels(c.len().max(2) * 2 + 1);
            }
            mesh.draw()?;
            for (i, s) in series.iter().enumerate() {
                let color = PALETTE[i % PALETTE.len()];
                // With few lines, earlier ones are drawn wider, so a line hidden under a later
                // equal one still shows as its outline.
                let widen = if series.len() <= 4 { 2 * (series.len() - 1 - i) as u32 } else { 0 };
                let style = color.stroke_width(2 + widen);
                let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| p.1.is_finite()).collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), style))?
                    .label(s.label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3)));
                if categories.is_some() || pts.len() <= 12 {
                    chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
                }
            }
            if !series.is_empty() && series.len() <= 8 {
                chart
                    .configure_series_labels()
                    .label_font(label_style)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK.mix(0.4))
                    .position(SeriesLabelPosition::UpperRight)
                    .draw()?;
            }
        }
        Plot::Bars { labels, values } => {
            let (y0, y1) = bounds(values.iter().copied(), true);
            let n = labels.len().max(1) as f64;
            let mut chart = ChartBuilder::on(area)
                .caption(&p.title, caption)
                .margin(12)
                .x_label_area_size(44)
                .y_label_area_size(64)
                .build_cartesian_2d(-0.5..n - 0.5, y0..y1)?;
            let names = labels.clone();
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(labels.len() * 2 + 1)
                .x_label_formatter(&|x| {
                    let i = x.round();
                    if (x - i).abs() < 1e-6 && i >= 0.0 {
                        names.get(i as usize).cloned().unwrap_or_default()
                    } else {
                        String::new()
                    }
                })
                .y_label_formatter(&|y| short(*y))
                .x_desc(&p.x_label)
                .y_desc(&p.y_label)
                .label_style(label_style.clone())
                .draw()?;
            for (i, v) in values.iter().enumerate() {
                let color = PALETTE[i % PALETTE.len()];
                let x = i as f64;
                chart
                    .draw_series(std::iter::once(Rectangle::new([(x - 0.35, 0.0), (x + 0.35, *v)], color.filled())))?;
                chart.draw_series(std::iter::once(Text::new(
                    short(*v),
                    (x - 0.15, *v + (y1 - y0) * 0.01),
                    label_style.clone(),
                )))?;
            }
        }
        Plot::Heatmap { rows, cols, values } => {
            let (lo, hi) = bounds(values.iter().flatten().copied(), false);
            let mut chart = ChartBuilder::on(area)
                .caption(&p.title, caption)
                .margin(12)
                .x_label_area_size(44)
                .y_label_area_size(90)
                .build_cartesian_2d(-0.5..cols.len() as f64 - 0.5, -0.5..rows.len() as f64 - 0.5)?;
            let (c, r) = (cols.clone(), rows.clone());
            let pick = |names: &[String], x: f64| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    names.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            };
            chart
                .configure_mesh()
                .disable_mesh()
                .x_labels(cols.len() * 2 + 1)
                .y_labels(rows.len() * 2 + 1)
                .x_label_formatter(&|x| pick(&c, *x))
                .y_label_formatter(&|y| pick(&r, *y))
                .x_desc(&p.x_label)
                .y_desc(&p.y_label)
                .label_style(label_style.clone())
                .draw()?;
            for (ri, row) in values.iter().enumerate() {
                for (ci, v) in row.iter().enumerate() {
                    let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
                    let (x, y) = (ci as f64, ri as f64);
                    chart.draw_series(std::iter::once(Rectangle::new(
                        [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                        viridis(t).filled(),
                    )))?;
                    let ink = if t > 0.6 { BLACK } else { WHITE };
                    chart.draw_series(std::iter::once(Text::new(
                        short(*v),
                        (x - 0.2, y),
                        label_style.clone().color(&ink),
                    )))?;
                }
            }
        }
    }
    Ok(())
}

/// The viridis colour map (perceptually uniform, colour-blind safe), `t` in 0..=1.
pub fn viridis(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] =
        [(68.0, 1.0, 84.0), (59.0, 82.0, 139.0), (33.0, 145.0, 140.0), (94.0, 201.0, 98.0), (253.0, 231.0, 37.0)];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let pos = t * (STOPS.len() - 1) as f64;
    let i = (pos.floor() as usize).min(STOPS.len() - 2);
    let f = pos - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figure_is_written_as_png_and_svg_with_its_text() {
        let dir = std::env::temp_dir().join(format!("numasim-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fig = Figure {
            title: "Locality check".into(),
            panels: vec![
                Panel {
                    title: "lines".into(),
                    x_label: "time (s)".into(),
                    y_label: "share".into(),
                    plot: Plot::Lines {
                        series: vec![Series { label: "explicit".into(), points: vec![(0.0, 0.5), (1.0, 0.9)] }],
                        categories: None,
                    },
                },
                Panel {
                    title: "bars".into(),
                    x_label: String::new(),
                    y_label: String::new(),
                    plot: Plot::Bars { labels: vec!["a".into(), "b".into()], values: vec![1.0, 3.0] },
                },
                Panel {
                    title: "heat".into(),
                    x_label: "x".into(),
                    y_label: "y".into(),
                    plot: Plot::Heatmap {
                        rows: vec!["r".into()],
                        cols: vec!["c1".into(), "c2".into()],
                        values: vec![vec![0.0, 2.0]],
                    },
                },
            ],
            columns: 2,
        };
        let files = fig.save(&dir.join("check")).unwrap();
        assert_eq!(files.len(), 2);
        let png = std::fs::read(&files[0]).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let svg = std::fs::read_to_string(&files[1]).unwrap();
        assert!(svg.contains("Locality check") && svg.contains("explicit"));
    }

    #[test]
    fn short_labels_and_the_colour_map() {
        assert_eq!(short(1_500_000.0), "1.5M");
        assert_eq!(short(35_000.0), "35k");
        assert_eq!(short(0.85), "0.85");
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
    }
}
