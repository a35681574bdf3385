//! PNG plots (plotters, bitmap backend, a font shipped in the repo): correlation by layer for
//! each module, pretrained against random-init (NFA and FACT); layer × head heatmaps for q, k
//! and v; a checkpoint series' correlation by step and its trajectory panel (with the eval
//! loss); and the eigenvalue spectra of `agop features`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::{cell_ci, distinct, head_module_names, module_names, Row};

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
// Text sizes are even: plotters 0.3.7's ab_glyph text places each glyph at (size / 2 + its top)
// truncated to a pixel, so at odd sizes glyphs that sit low (the period) are drawn a pixel higher
// than the rest ("attn·c_attn", "0·5").

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// The y range of a panel from the values and interval ends it shows: their span with a margin,
/// inside [−1, 1] (an interval reaching past it is clipped, not allowed to flatten every line).
fn y_range(ys: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) =
        ys.filter(|y| y.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
    let (lo, hi) = if lo.is_finite() { (lo.max(-1.0), hi.min(1.0)) } else { (0.0, 1.0) };
    let margin = ((hi - lo) * 0.08).max(0.005);
    (lo - margin)..(hi + margin)
}

/// A panel's caption: the module, and for per-head modules that a point is the median over heads.
fn panel_caption(module: &str, heads: &[String]) -> String {
    format!("{module}{}", if heads.iter().any(|h| h == module) { " (median over heads)" } else { "" })
}

/// A colour for t in [0, 1] on the viridis scale (dark blue → green → yellow), from its
/// published anchor colours.
fn viridis(t: f64) -> RGBColor {
    const A: [(u8, u8, u8); 6] =
        [(68, 1, 84), (65, 68, 135), (42, 120, 142), (34, 168, 132), (122, 209, 81), (253, 231, 37)];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 } * (A.len() - 1) as f64;
    let i = (t.floor() as usize).min(A.len() - 2);
    let f = t - i as f64;
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    RGBColor(mix(A[i].0, A[i + 1].0), mix(A[i].1, A[i + 1].1), mix(A[i].2, A[i + 1].2))
}

/// Where a plot is drawn before it is renamed to `path` (a kill while drawing leaves no
/// truncated PNG under its final name); `.png` kept, which the encoder reads the format from.
fn tmp_png(path: impl AsRef<Path>) -> PathBuf {
    let path = path.as_ref();
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{stem}.tmp{}.png", std::process::id()))
}

fn palette(i: usize) -> RGBColor {
    [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(148, 103, 189)][i % 4]
}

/// A power as plot file names, titles and the report's tables show it: as written (`0.5`) when that is short, else
/// in exponent form (`1e-300`, whose decimal form would outgrow a file name).
pub fn power_label(p: f64) -> String {
    let plain = p.to_string();
    if plain.len() <= 10 {
        plain
    } else {
        format!("{p:e}")
    }
}

/// Write every plot into `dir` from the NFA rows, the FACT rows (empty when the run measured
/// none) and the NFA contrast rows (empty without contrasts.parquet); returns the files written.
/// The subspace size the by-layer subspace plot and the report's subspace block show.
pub const SUBSPACE_SHOWN: &str = "subspace-4";

pub fn write_all(rows: &[Row], fact: &[Row], contrasts: &[Row], dir: &Path) -> Result<Vec<PathBuf>> {
    let (subspace, rows): (Vec<Row>, Vec<Row>) = rows.iter().cloned().partition(|r| r.metric.starts_with("subspace-"));
    let (subspace, rows) = (&subspace[..], &rows[..]);
    register_font();
    std::fs::create_dir_all(dir)?;
    // The measured powers, from the Pearson rows (the subspace rows carry power 1 regardless).
    let powers = distinct(rows.iter().filter(|r| r.metric == "pearson").map(|r| r.power.to_bits()))
        .into_iter()
        .map(f64::from_bits)
        .collect::<Vec<_>>();
    let weights = distinct(rows.iter().map(|r| r.weights.clone()));
    let bars = if rows.iter().chain(fact).any(|r| r.ci.is_some()) { " (bars: 95% jackknife interval)" } else { "" };
    let mut written = Vec::new();
    let line = |label: String, rows, w: &String, power, k, dashed| Line {
        label,
        rows,
        weights: w.clone(),
        power,
        metric: "pearson",
        color: palette(k),
        dashed,
    };
    if !fact.is_empty() {
        // NFA and FACT side by side, each against its random-init level: solid NFA (α = 0.5 when
        // measured, else the first power), dashed FACT, one colour per weights setting.
        let alpha = powers.iter().copied().find(|&p| p == 0.5).or(powers.first().copied()).unwrap_or(0.5);
        let mut lines = Vec::new();
        for (k, w) in weights.iter().enumerate() {
            lines.push(line(format!("NFA α={} {w}", power_label(alpha)), rows, w, alpha, k, false));
            lines.push(line(format!("FACT {w}"), fact, w, 1.0, k, true));
        }
        let path = dir.join("by-layer-fact.png");
        let title = format!("NFA (NFM vs AGOP^α, solid) and FACT (NFM vs −WᵀG, dashed): Pearson by layer{bars}");
        by_layer(&lines, &title, &path)?;
        written.push(path);
    }
    for &p in &powers {
        let path = dir.join(format!("by-layer-power{}.png", power_label(p)));
        let lines: Vec<Line> = weights.iter().enumerate().map(|(k, w)| line(w.clone(), rows, w, p, k, false)).collect();
        by_layer(&lines, &format!("NFM vs AGOP^{}: Pearson correlation by layer{bars}", power_label(p)), &path)?;
        written.push(path);
        for m in head_module_names(rows) {
            for w in &weights {
                let path = dir.join(format!("heads-{}-{w}-power{}.png", m.trim_start_matches("attn."), power_label(p)));
                if heatmap(rows, w, &m, p, contrasts, &path)? {
                    written.push(path);
                }
            }
        }
    }
    if subspace.iter().any(|r| r.metric == SUBSPACE_SHOWN) {
        let path = dir.join("by-layer-subspace.png");
        let lines: Vec<Line> = weights
            .iter()
            .enumerate()
            .map(|(k, w)| Line { metric: SUBSPACE_SHOWN, ..line(w.clone(), subspace, w, 1.0, k, false) })
            .collect();
        let title =
            format!("Top-4 eigenspaces of NFM and AGOP: mean squared cosine of the principal angles by layer{bars}");
        by_layer(&lines, &title, &path)?;
        written.push(path);
    }
    Ok(written)
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing plot: {e}")
}

/// One line of a by-layer plot: the Pearson cells of (`weights`, `power`) in `rows`.
struct Line<'a> {
    label: String,
    rows: &'a [Row],
    weights: String,
    power: f64,
    /// `pearson`, or a `subspace-<k>` metric.
    metric: &'static str,
    color: RGBColor,
    dashed: bool,
}

/// One panel per module: Pearson correlation against layer, one line per [`Line`].
fn by_layer(lines: &[Line], title: &str, path: &Path) -> Result<()> {
    let layers = distinct(lines.iter().flat_map(|l| l.rows.iter().map(|r| r.layer)));
    let max_layer = layers.iter().copied().max().unwrap_or(0);
    let tmp = tmp_png(path);
    let root = BitMapBackend::new(&tmp, (1400, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
    let panels = root.split_evenly((2, 4));
    let all_rows = || lines.iter().flat_map(|l| l.rows.iter());
    let heads = head_module_names(all_rows());
    for (i, m) in module_names(all_rows()).iter().enumerate() {
        // Each panel's y axis spans its own values and intervals: a fixed range would hide
        // intervals of ±0.001 and the gap between pretrained and random-init.
        let cells_of = |line: &Line| -> Trace {
            layers
                .iter()
                .filter_map(|&l| {
                    cell_ci(line.rows, &line.weights, l, m, line.power, line.metric).map(|(v, ci)| (l as f64, v, ci))
                })
                .collect()
        };
        let all: Vec<_> = lines.iter().flat_map(cells_of).collect();
        let ys = all.iter().flat_map(|&(_, v, ci)| [Some(v), ci.map(|c| c.0), ci.map(|c| c.1)]).flatten();
        let mut chart = ChartBuilder::on(&panels[i])
            .caption(panel_caption(m, &heads), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(52)
            .build_cartesian_2d(-0.5f64..(max_layer as f64 + 0.5), y_range(ys))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("layer")
            .y_desc(if lines[0].metric == "pearson" { "Pearson" } else { "agreement" })
            .x_labels(max_layer as usize + 2)
            .y_labels(6)
            .x_label_formatter(&|x| if x.fract() == 0.0 { format!("{x:.0}") } else { String::new() })
            .y_label_formatter(&|y| format!("{y:.3}"))
            .light_line_style(WHITE)
            .draw()
            .map_err(err)?;
        for line in lines {
            let cells = cells_of(line);
            let pts: Vec<(f64, f64)> = cells.iter().map(|c| (c.0, c.1)).collect();
            let color = line.color;
            // 95% intervals as error bars.
            chart
                .draw_series(cells.iter().filter_map(|&(x, v, ci)| {
                    ci.map(|(lo, hi)| ErrorBar::new_vertical(x, lo, v, hi, color.stroke_width(1), 6))
                }))
                .map_err(err)?;
            if line.dashed {
                chart.draw_series(DashedLineSeries::new(pts.clone(), 6, 4, color.stroke_width(2))).map_err(err)?;
            } else {
                chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2))).map_err(err)?;
            }
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(err)?;
        }
    }
    // One legend, in the eighth panel (seven modules fill the others), so that no panel's data
    // hides behind it; dashed lines get dashed swatches.
    let legend = &panels[7];
    for (k, line) in lines.iter().enumerate() {
        let y = 40 + 26 * k as i32;
        let st = line.color.stroke_width(3);
        if line.dashed {
            for x in [30, 44, 58] {
                legend.draw(&PathElement::new(vec![(x, y), (x + 9, y)], st)).map_err(err)?;
            }
        } else {
            legend.draw(&PathElement::new(vec![(30, y), (67, y)], st)).map_err(err)?;
        }
        legend.draw(&Circle::new((48, y), 3, line.color.filled())).map_err(err)?;
        legend.draw(&Text::new(line.label.clone(), (80, y - 8), ("sans-serif", 16))).map_err(err)?;
    }
    root.present().map_err(err)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Layer × head heatmap of the Pearson correlation for one of q, k, v, in colours scaled to the
/// heatmap's own range (viridis, with a colour bar). False if no head rows. A pretrained cell
/// whose pretrained − random-init interval (contrasts.parquet, `contrasts`) includes 0 is
/// outlined: the same test as the contrast table's missing `*`.
fn heatmap(rows: &[Row], weights: &str, module: &str, power: f64, contrasts: &[Row], path: &Path) -> Result<bool> {
    let cells: Vec<(u32, u32, f64)> = rows
        .iter()
        .filter(|r| r.weights == weights && r.module == module && r.power == power && r.metric == "pearson")
        .filter_map(|r| r.head.map(|h| (r.layer, h, r.value)))
        .filter(|c| c.2.is_finite())
        .collect();
    if cells.is_empty() {
        return Ok(false);
    }
    // The contrast rows of these weights: `pretrained − random-init`, with the step of a series.
    let contrast_weights = match weights.split_once('@') {
        Some((_, step)) => format!("pretrained − random-init@{step}"),
        None => "pretrained − random-init".to_string(),
    };
    let marked: Vec<(u32, u32)> = if weights.starts_with("pretrained") {
        contrasts
            .iter()
            .filter(|c| {
                c.weights == contrast_weights && c.module == module && c.power == power && c.metric == "pearson"
            })
            .filter(|c| c.ci.is_some_and(|(lo, hi)| lo <= 0.0 && 0.0 <= hi))
            .filter_map(|c| c.head.map(|h| (c.layer, h)))
            .collect()
    } else {
        vec![]
    };
    let n_layer = cells.iter().map(|c| c.0).max().unwrap_or(0) + 1;
    let n_head = cells.iter().map(|c| c.1).max().unwrap_or(0) + 1;
    let (vmin, vmax) = cells.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), c| (a.min(c.2), b.max(c.2)));
    let span = if vmax > vmin { vmax - vmin } else { 1e-9 };
    let t = |v: f64| (v - vmin) / span;
    let tmp = tmp_png(path);
    let root = BitMapBackend::new(&tmp, (1000, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, root) = root.split_vertically(64);
    let centred = |size: i32| {
        ("sans-serif", size).into_font().color(&BLACK).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Center,
        ))
    };
    let title = format!("{module} ({weights}): Pearson(NFM, AGOP^{}) by layer and head", power_label(power));
    top.draw(&Text::new(title, (500, 20), centred(20))).map_err(err)?;
    let note = if !weights.starts_with("pretrained") {
        "colours scaled to this plot's range (colour bar)".to_string()
    } else if contrasts.is_empty() {
        "colours scaled to this plot's range; no contrasts.parquet, so no outlines".to_string()
    } else {
        "colours: this plot's range; red outline: the pretrained − random-init 95% interval includes 0 (not \
         different from random-init)"
            .to_string()
    };
    top.draw(&Text::new(note, (500, 48), centred(14))).map_err(err)?;
    let (main, bar) = root.split_horizontally(880);
    let mut chart = ChartBuilder::on(&main)
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(54)
        .build_cartesian_2d(-0.5f64..(n_head as f64 - 0.5), -0.5f64..(n_layer as f64 - 0.5))
        .map_err(err)?;
    let int_label = |x: &f64| if x.fract() == 0.0 { format!("{x:.0}") } else { String::new() };
    chart
        .configure_mesh()
        .x_desc("head")
        .y_desc("layer")
        .x_labels(n_head as usize + 1)
        .y_labels(n_layer as usize + 1)
        .x_label_formatter(&int_label)
        .y_label_formatter(&int_label)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .disable_mesh()
        .draw()
        .map_err(err)?;
    chart
        .draw_series(cells.iter().map(|&(l, h, v)| {
            let (x, y) = (h as f64, l as f64);
            Rectangle::new([(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)], viridis(t(v)).filled())
        }))
        .map_err(err)?;
    chart
        .draw_series(marked.iter().map(|&(l, h)| {
            let (x, y) = (h as f64, l as f64);
            Rectangle::new([(x - 0.44, y - 0.44), (x + 0.44, y + 0.44)], RGBColor(230, 30, 30).stroke_width(3))
        }))
        .map_err(err)?;
    if n_head <= 32 {
        chart
            .draw_series(cells.iter().map(|&(l, h, v)| {
                // Light text on the dark end of the scale, dark text on the light end.
                let ink = if t(v) < 0.55 { WHITE } else { BLACK };
                let style = ("sans-serif", 14).into_font().color(&ink).pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Center,
                ));
                Text::new(format!("{v:.3}"), (h as f64, l as f64), style)
            }))
            .map_err(err)?;
    }
    // The colour bar: the scale's colours from the lowest to the highest value shown.
    let mut cb = ChartBuilder::on(&bar)
        .margin_top(12)
        .margin_bottom(56)
        .margin_right(8)
        .y_label_area_size(76)
        .build_cartesian_2d(0f64..1f64, vmin..(vmin + span))
        .map_err(err)?;
    cb.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(8)
        .y_desc("Pearson")
        .y_label_formatter(&|y| format!("{y:.3}"))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    let n = 100;
    cb.draw_series((0..n).map(|i| {
        let (a, b) = (vmin + span * i as f64 / n as f64, vmin + span * (i + 1) as f64 / n as f64);
        Rectangle::new([(0.0, a), (1.0, b)], viridis((i as f64 + 0.5) / n as f64).filled())
    }))
    .map_err(err)?;
    root.present().map_err(err)?;
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

/// A checkpoint series: for each power, one panel per module with the Pearson correlation
/// against the training step (log scale), one line per layer (dark → light with depth), and the
/// random-init level (median over layers) as a dashed line. Returns the files written.
pub fn by_step(rows: &[Row], dir: &Path) -> Result<Vec<PathBuf>> {
    register_font();
    std::fs::create_dir_all(dir)?;
    // The measured powers, from the Pearson rows (the subspace rows carry power 1 regardless).
    let powers = distinct(rows.iter().filter(|r| r.metric == "pearson").map(|r| r.power.to_bits()))
        .into_iter()
        .map(f64::from_bits)
        .collect::<Vec<_>>();
    let mut steps: Vec<u64> = rows.iter().filter_map(|r| r.step).collect();
    steps.sort_unstable();
    steps.dedup();
    let layers = distinct(rows.iter().map(|r| r.layer));
    let x = |s: u64| (s.max(1) as f64).log10();
    let (x0, x1) = (x(steps[0]), x(*steps.last().unwrap_or(&1)));
    let pad = ((x1 - x0) * 0.05).max(0.1);
    let mut written = Vec::new();
    for &power in &powers {
        let path = dir.join(format!("by-step-power{}.png", power_label(power)));
        written.push(path.clone());
        let tmp = tmp_png(&path);
        let root = BitMapBackend::new(&tmp, (1400, 800)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root
            .titled(
                &format!(
                    "NFM vs AGOP^{}: Pearson correlation by training step (dashed: random-init)",
                    power_label(power)
                ),
                ("sans-serif", 22),
            )
            .map_err(err)?;
        let panels = root.split_evenly((2, 4));
        let heads = head_module_names(rows);
        for (i, m) in module_names(rows).iter().enumerate() {
            let traces: Vec<Vec<(f64, f64)>> = layers
                .iter()
                .map(|&l| {
                    steps
                        .iter()
                        .filter_map(|&s| {
                            let w = format!("pretrained@{s}");
                            cell_ci(rows, &w, l, m, power, "pearson").map(|(v, _)| (x(s), v))
                        })
                        .collect()
                })
                .collect();
            let control: Vec<f64> = layers
                .iter()
                .filter_map(|&l| cell_ci(rows, "random-init", l, m, power, "pearson").map(|c| c.0))
                .collect();
            let level = (!control.is_empty()).then(|| super::median(control));
            let ys = traces.iter().flatten().map(|p| p.1).chain(level);
            let mut chart = ChartBuilder::on(&panels[i])
                .caption(panel_caption(m, &heads), ("sans-serif", 16))
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(52)
                .build_cartesian_2d((x0 - pad)..(x1 + pad), y_range(ys))
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("log10 step")
                .y_desc("Pearson")
                .y_label_formatter(&|y| format!("{y:.3}"))
                .light_line_style(WHITE)
                .draw()
                .map_err(err)?;
            for (k, pts) in traces.into_iter().enumerate() {
                let t = if layers.len() > 1 { k as f64 / (layers.len() - 1) as f64 } else { 0.0 };
                let color = HSLColor(0.6, 0.7, 0.25 + 0.5 * t);
                chart.draw_series(LineSeries::new(pts, color.stroke_width(2))).map_err(err)?;
            }
            if let Some(level) = level {
                chart
                    .draw_series(DashedLineSeries::new(
                        vec![(x0 - pad, level), (x1 + pad, level)],
                        6,
                        4,
                        RED.stroke_width(2),
                    ))
                    .map_err(err)?;
            }
        }
        root.present().map_err(err)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(written)
}

/// One layer's points along training: (step, value, 95% interval).
type Trace = Vec<(f64, f64, Option<(f64, f64)>)>;

/// The trajectory of a checkpoint series at a glance (`trajectory.png`): one panel per module
/// with the Pearson correlation of NFM vs AGOP^α (solid, α = the largest power measured) and of
/// FACT (dashed) against the training step, a line per layer (darker = deeper) with 95%
/// jackknife bars (per-head modules: medians over heads), the random-init control as a grey band
/// (its lowest to highest layer value); and, when the run was trained here, the eval loss on the
/// same step axis in the last panel. The y axes are scaled to the data.
pub fn trajectory(rows: &[Row], fact: &[Row], eval_loss: &[(u64, f64)], dir: &Path) -> Result<PathBuf> {
    register_font();
    std::fs::create_dir_all(dir)?;
    let power = rows.iter().map(|r| r.power).fold(f64::NAN, f64::max);
    let mut steps: Vec<u64> = rows.iter().filter_map(|r| r.step).collect();
    steps.sort_unstable();
    steps.dedup();
    let layers = distinct(rows.iter().map(|r| r.layer));
    let (s0, s1) = (*steps.first().unwrap_or(&0) as f64, *steps.last().unwrap_or(&1) as f64);
    let pad = ((s1 - s0) * 0.04).max(0.5);
    let path = dir.join("trajectory.png");
    let written = path.clone();
    let tmp = tmp_png(&path);
    let root = BitMapBackend::new(&tmp, (1600, 860)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(
            &format!(
                "Along training: NFA (NFM vs AGOP^{}, solid) and FACT (dashed), Pearson by step; grey band: \
                 random-init control; bars: 95% jackknife",
                power_label(power)
            ),
            ("sans-serif", 20),
        )
        .map_err(err)?;
    let panels = root.split_evenly((2, 4));
    let shade = |k: usize| {
        let t = if layers.len() > 1 { k as f64 / (layers.len() - 1) as f64 } else { 0.0 };
        HSLColor(0.6, 0.75, 0.62 - 0.42 * t)
    };
    let heads = head_module_names(rows);
    for (i, m) in module_names(rows).iter().enumerate() {
        // (ansatz rows, power) → per layer: points (step, value, interval).
        let series = |src: &[Row], p: f64| -> Vec<Trace> {
            layers
                .iter()
                .map(|&l| {
                    steps
                        .iter()
                        .filter_map(|&s| {
                            cell_ci(src, &format!("pretrained@{s}"), l, m, p, "pearson")
                                .map(|(v, ci)| (s as f64, v, ci))
                        })
                        .collect()
                })
                .collect()
        };
        let (nfa, fa) = (series(rows, power), series(fact, 1.0));
        let control: Vec<f64> =
            layers.iter().filter_map(|&l| cell_ci(rows, "random-init", l, m, power, "pearson").map(|c| c.0)).collect();
        let mut ys: Vec<f64> = control.clone();
        for p in nfa.iter().chain(&fa).flatten() {
            ys.push(p.1);
            if let Some((lo, hi)) = p.2 {
                ys.extend([lo, hi]);
            }
        }
        let yr = y_range(ys.into_iter());
        let (lo, hi) = (yr.start, yr.end);
        let mut chart = ChartBuilder::on(&panels[i])
            .caption(panel_caption(m, &heads), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(34)
            .y_label_area_size(52)
            .build_cartesian_2d((s0 - pad)..(s1 + pad), yr)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("training step")
            .y_desc("Pearson")
            .x_labels(6)
            .y_labels(6)
            .x_label_formatter(&|x| {
                let r = x.round();
                let lead = r / 10f64.powf(r.log10().floor());
                if (x - r).abs() < 1e-6 && [1.0, 2.0, 5.0].contains(&lead) {
                    format!("{r:.0}")
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.2}"))
            .light_line_style(WHITE)
            .draw()
            .map_err(err)?;
        if !control.is_empty() {
            let (clo, chi) = control.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| (a.min(y), b.max(y)));
            let h = ((hi - lo) * 0.004).max(1e-4);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(s0 - pad, clo - h), (s1 + pad, chi + h)],
                    RGBColor(150, 150, 150).mix(0.35).filled(),
                )))
                .map_err(err)?;
        }
        for (k, (a, b)) in nfa.iter().zip(&fa).enumerate() {
            let color = shade(k);
            let label = format!("layer {}", layers[k]);
            let drawn =
                chart.draw_series(LineSeries::new(a.iter().map(|p| (p.0, p.1)), color.stroke_width(2))).map_err(err)?;
            if i == 0 {
                drawn
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            }
            chart
                .draw_series(b.windows(2).flat_map(|w| {
                    // Dashed by hand: short segments along each stretch.
                    let n = 8;
                    (0..n).step_by(2).map(move |j| {
                        let f = |t: f64| (w[0].0 + (w[1].0 - w[0].0) * t, w[0].1 + (w[1].1 - w[0].1) * t);
                        PathElement::new(
                            vec![f(j as f64 / n as f64), f((j + 1) as f64 / n as f64)],
                            color.stroke_width(2),
                        )
                    })
                }))
                .map_err(err)?;
            for p in a.iter().chain(b) {
                if let Some((l, h)) = p.2 {
                    chart
                        .draw_series(std::iter::once(ErrorBar::new_vertical(p.0, l, p.1, h, color.stroke_width(1), 6)))
                        .map_err(err)?;
                }
            }
        }
        if i == 0 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(err)?;
        }
    }
    // The last panel: the eval loss on the same step axis.
    let last = &panels[7];
    if eval_loss.is_empty() {
        last.draw(&Text::new("no training log (train.parquet) for this run", (20, 40), ("sans-serif", 16)))
            .map_err(err)?;
    } else {
        let (lo, hi) = eval_loss.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let margin = ((hi - lo) * 0.08).max(0.01);
        let mut chart = ChartBuilder::on(last)
            .caption("eval loss (held-out windows)", ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(34)
            .y_label_area_size(52)
            .build_cartesian_2d((s0 - pad)..(s1 + pad), (lo - margin)..(hi + margin))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("training step")
            .y_desc("nats / token")
            .x_labels(6)
            .x_label_formatter(&|x| {
                let r = x.round();
                let lead = r / 10f64.powf(r.log10().floor());
                if (x - r).abs() < 1e-6 && [1.0, 2.0, 5.0].contains(&lead) {
                    format!("{r:.0}")
                } else {
                    String::new()
                }
            })
            .light_line_style(WHITE)
            .draw()
            .map_err(err)?;
        let pts: Vec<(f64, f64)> = eval_loss.iter().map(|&(s, v)| (s as f64, v)).collect();
        chart.draw_series(LineSeries::new(pts.clone(), BLACK.stroke_width(2))).map_err(err)?;
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, BLACK.filled()))).map_err(err)?;
    }
    root.present().map_err(err)?;
    std::fs::rename(&tmp, &path)?;
    Ok(written)
}

/// One curve of a spectrum plot: eigenvalue share (y) against rank (x) in one layer's panel.
pub struct SpectrumLine {
    pub layer: u32,
    pub label: String,
    /// 0–3: the palette; 4: grey; 100–200: viridis from 0 to 1.
    pub color: usize,
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
}

fn spectrum_color(c: usize) -> RGBColor {
    match c {
        0..=3 => palette(c),
        100..=200 => viridis((c - 100) as f64 / 100.0),
        _ => RGBColor(128, 128, 128),
    }
}

/// Log-log panels, one per layer (at most 12, evenly spaced), of [`SpectrumLine`]s; the legend
/// (the first layer's labels) in the first panel.
pub fn spectrum_plot(lines: &[SpectrumLine], title: &str, path: &Path) -> Result<()> {
    register_font();
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut layers = distinct(lines.iter().map(|l| l.layer));
    if layers.len() > 12 {
        let n = layers.len();
        layers = (0..12).map(|i| layers[i * (n - 1) / 11]).collect();
    }
    let cols = layers.len().clamp(1, 4);
    let rows = layers.len().div_ceil(cols).max(1);
    let tmp = tmp_png(path);
    let root =
        BitMapBackend::new(&tmp, ((350 * cols as u32 + 50).max(1100), 320 * rows as u32 + 60)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(err)?;
    let panels = root.split_evenly((rows, cols));
    let pts = || lines.iter().flat_map(|l| l.points.iter());
    let max_rank = pts().map(|p| p.0).fold(1.0f64, f64::max).max(2.0);
    // Shares below 1e-5 of the trace are numerically zero for these plots' purpose.
    let min_share = pts().map(|p| p.1).filter(|y| *y > 0.0).fold(1.0f64, f64::min).max(1e-5);
    for (i, &layer) in layers.iter().enumerate() {
        let mut chart = ChartBuilder::on(&panels[i])
            .caption(format!("layer {layer}"), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(52)
            .build_cartesian_2d((1.0f64..max_rank).log_scale(), (min_share * 0.8..1.0f64).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("rank")
            .y_desc("share of trace")
            .x_label_formatter(&|x| {
                let r = x.round();
                let lead = r / 10f64.powf(r.log10().floor());
                if (x - r).abs() < 1e-6 && [1.0, 2.0, 5.0].contains(&lead) {
                    format!("{r:.0}")
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.0e}"))
            .light_line_style(WHITE)
            .draw()
            .map_err(err)?;
        for line in lines.iter().filter(|l| l.layer == layer && !l.points.is_empty()) {
            let style = spectrum_color(line.color).stroke_width(2);
            // Points below the axis floor are clipped to it rather than drawn off the panel.
            let points: Vec<(f64, f64)> = line.points.iter().map(|&(x, y)| (x, y.max(min_share * 0.8))).collect();
            if line.dashed {
                chart.draw_series(DashedLineSeries::new(points, 6, 4, style)).map_err(err)?;
            } else {
                chart.draw_series(LineSeries::new(points, style)).map_err(err)?;
            }
        }
    }
    // The legend, in the first panel's lower left: the solid lines' labels (the title says what
    // dashed means), each once.
    let labels: Vec<(String, usize)> =
        distinct(lines.iter().filter(|l| !l.dashed && l.layer == layers[0]).map(|l| (l.label.clone(), l.color)));
    let (_, h) = panels[0].dim_in_pixel();
    for (k, (label, color)) in labels.iter().enumerate() {
        let y = h as i32 - 50 - 18 * (labels.len() - k) as i32;
        let style = spectrum_color(*color).stroke_width(3);
        panels[0].draw(&PathElement::new(vec![(75, y), (100, y)], style)).map_err(err)?;
        panels[0].draw(&Text::new(label.clone(), (106, y - 7), ("sans-serif", 14))).map_err(err)?;
    }
    root.present().map_err(err)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
