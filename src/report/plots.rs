//! PNG plots (plotters, bitmap backend, a font shipped in the repo): correlation by layer for
//! each module, pretrained against random-init; and layer × head heatmaps for q, k and v.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::{cell_ci, distinct, head_module_names, module_names, Row};

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn palette(i: usize) -> RGBColor {
    [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(148, 103, 189)][i % 4]
}

/// Write every plot into `dir` from the NFA rows and the FACT rows (empty when the run measured
/// none); returns the files written.
pub fn write_all(rows: &[Row], fact: &[Row], dir: &Path) -> Result<Vec<PathBuf>> {
    register_font();
    std::fs::create_dir_all(dir)?;
    let powers = distinct(rows.iter().map(|r| r.power.to_bits())).into_iter().map(f64::from_bits).collect::<Vec<_>>();
    let weights = distinct(rows.iter().map(|r| r.weights.clone()));
    let bars = if rows.iter().chain(fact).any(|r| r.ci.is_some()) { " (bars: 95% jackknife interval)" } else { "" };
    let mut written = Vec::new();
    let line = |label: String, rows, w: &String, power, k, dashed| Line {
        label,
        rows,
        weights: w.clone(),
        power,
        color: palette(k),
        dashed,
    };
    if !fact.is_empty() {
        // NFA and FACT side by side, each against its random-init level: solid NFA (α = 0.5 when
        // measured, else the first power), dashed FACT, one colour per weights setting.
        let alpha = powers.iter().copied().find(|&p| p == 0.5).or(powers.first().copied()).unwrap_or(0.5);
        let mut lines = Vec::new();
        for (k, w) in weights.iter().enumerate() {
            lines.push(line(format!("NFA α={alpha} {w}"), rows, w, alpha, k, false));
            lines.push(line(format!("FACT {w}"), fact, w, 1.0, k, true));
        }
        let path = dir.join("by-layer-fact.png");
        let title = format!("NFA (NFM vs AGOP^α, solid) and FACT (NFM vs −WᵀG, dashed): Pearson by layer{bars}");
        by_layer(&lines, &title, &path)?;
        written.push(path);
    }
    for &p in &powers {
        let path = dir.join(format!("by-layer-power{p}.png"));
        let lines: Vec<Line> = weights.iter().enumerate().map(|(k, w)| line(w.clone(), rows, w, p, k, false)).collect();
        by_layer(&lines, &format!("NFM vs AGOP^{p}: Pearson correlation by layer{bars}"), &path)?;
        written.push(path);
        for m in head_module_names() {
            for w in &weights {
                let path = dir.join(format!("heads-{}-{w}-power{p}.png", m.trim_start_matches("attn.")));
                if heatmap(rows, w, m, p, &path)? {
                    written.push(path);
                }
            }
        }
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
    color: RGBColor,
    dashed: bool,
}

/// One panel per module: Pearson correlation against layer, one line per [`Line`].
fn by_layer(lines: &[Line], title: &str, path: &Path) -> Result<()> {
    let layers = distinct(lines.iter().flat_map(|l| l.rows.iter().map(|r| r.layer)));
    let max_layer = layers.iter().copied().max().unwrap_or(0);
    let root = BitMapBackend::new(path, (1400, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
    // FACT correlations can be negative: the y axis reaches down to the lowest value shown.
    let lowest = lines
        .iter()
        .flat_map(|l| l.rows.iter().filter(|r| r.weights == l.weights && r.power == l.power && r.metric == "pearson"))
        .map(|r| r.ci.map_or(r.value, |c| c.0.min(r.value)))
        .filter(|v| v.is_finite())
        .fold(-0.2f64, f64::min);
    let y0 = if lowest < -0.2 { lowest - 0.05 } else { -0.2 };
    let panels = root.split_evenly((2, 4));
    for (i, m) in module_names().iter().enumerate() {
        let mut chart = ChartBuilder::on(&panels[i])
            .caption(*m, ("sans-serif", 18))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(-0.5f64..(max_layer as f64 + 0.5), y0..1.0f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("layer")
            .x_labels(max_layer as usize + 2)
            .x_label_formatter(&|x| if x.fract() == 0.0 { format!("{x:.0}") } else { String::new() })
            .light_line_style(WHITE)
            .draw()
            .map_err(err)?;
        for line in lines {
            let cells: Vec<_> = layers
                .iter()
                .filter_map(|&l| {
                    cell_ci(line.rows, &line.weights, l, m, line.power, "pearson").map(|(v, ci)| (l as f64, v, ci))
                })
                .collect();
            let pts: Vec<(f64, f64)> = cells.iter().map(|c| (c.0, c.1)).collect();
            let color = line.color;
            // 95% intervals as error bars.
            chart
                .draw_series(cells.iter().filter_map(|&(x, v, ci)| {
                    ci.map(|(lo, hi)| ErrorBar::new_vertical(x, lo, v, hi, color.stroke_width(1), 6))
                }))
                .map_err(err)?;
            let legend = move |(x, y): (i32, i32)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2));
            if line.dashed {
                chart
                    .draw_series(DashedLineSeries::new(pts.clone(), 6, 4, color.stroke_width(2)))
                    .map_err(err)?
                    .label(line.label.as_str())
                    .legend(legend);
            } else {
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(err)?
                    .label(line.label.as_str())
                    .legend(legend);
            }
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Layer × head heatmap of the Pearson correlation for one of q, k, v. False if no head rows.
/// A cell of a non-control heatmap whose 95% interval includes the random-init estimate of the
/// same layer and head (bias-corrected, as the interval is) is outlined.
fn heatmap(rows: &[Row], weights: &str, module: &str, power: f64, path: &Path) -> Result<bool> {
    let pick = |w: &str| -> Vec<&Row> {
        rows.iter()
            .filter(|r| r.weights == w && r.module == module && r.power == power && r.metric == "pearson")
            .filter(|r| r.head.is_some())
            .collect()
    };
    let control = if weights == "random-init" { vec![] } else { pick("random-init") };
    let cells: Vec<(u32, u32, f64)> = pick(weights).iter().map(|r| (r.layer, r.head.unwrap_or(0), r.value)).collect();
    let marked: Vec<(u32, u32)> = pick(weights)
        .iter()
        .filter(|r| {
            r.ci.is_some_and(|(lo, hi)| {
                control.iter().any(|c| {
                    // The control's own bias-corrected estimate (its interval's centre) where it has one.
                    let v = c.ci.map(|(a, b)| 0.5 * (a + b)).unwrap_or(c.value);
                    c.layer == r.layer && c.head == r.head && lo <= v && v <= hi
                })
            })
        })
        .map(|r| (r.layer, r.head.unwrap_or(0)))
        .collect();
    if cells.is_empty() {
        return Ok(false);
    }
    let n_layer = cells.iter().map(|c| c.0).max().unwrap_or(0) + 1;
    let n_head = cells.iter().map(|c| c.1).max().unwrap_or(0) + 1;
    let root = BitMapBackend::new(path, (900, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let note = if marked.is_empty() { String::new() } else { "; outlined: 95% interval includes random-init".into() };
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{module} ({weights}): Pearson(NFM, AGOP^{power}) by layer and head{note}"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
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
        .disable_mesh()
        .draw()
        .map_err(err)?;
    chart
        .draw_series(cells.iter().map(|&(l, h, v)| {
            let t = v.clamp(0.0, 1.0);
            let color = HSLColor(0.66 - 0.66 * t, 0.8, 0.55);
            let (x, y) = (h as f64, l as f64);
            Rectangle::new([(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)], color.filled())
        }))
        .map_err(err)?;
    chart
        .draw_series(marked.iter().map(|&(l, h)| {
            let (x, y) = (h as f64, l as f64);
            Rectangle::new([(x - 0.45, y - 0.45), (x + 0.45, y + 0.45)], BLACK.stroke_width(3))
        }))
        .map_err(err)?;
    if n_head <= 32 {
        chart
            .draw_series(cells.iter().map(|&(l, h, v)| {
                let style = ("sans-serif", 12).into_font().color(&BLACK).pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Center,
                ));
                Text::new(format!("{v:.2}"), (h as f64, l as f64), style)
            }))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(true)
}

/// A checkpoint series: for each power, one panel per module with the Pearson correlation
/// against the training step (log scale), one line per layer (dark → light with depth), and the
/// random-init level (median over layers) as a dashed line. Returns the files written.
pub fn by_step(rows: &[Row], dir: &Path) -> Result<Vec<PathBuf>> {
    register_font();
    std::fs::create_dir_all(dir)?;
    let powers = distinct(rows.iter().map(|r| r.power.to_bits())).into_iter().map(f64::from_bits).collect::<Vec<_>>();
    let mut steps: Vec<u64> = rows.iter().filter_map(|r| r.step).collect();
    steps.sort_unstable();
    steps.dedup();
    let layers = distinct(rows.iter().map(|r| r.layer));
    let x = |s: u64| (s.max(1) as f64).log10();
    let (x0, x1) = (x(steps[0]), x(*steps.last().unwrap_or(&1)));
    let pad = ((x1 - x0) * 0.05).max(0.1);
    let mut written = Vec::new();
    for &power in &powers {
        let path = dir.join(format!("by-step-power{power}.png"));
        written.push(path.clone());
        let root = BitMapBackend::new(&path, (1400, 800)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root
            .titled(
                &format!("NFM vs AGOP^{power}: Pearson correlation by training step (dashed: random-init)"),
                ("sans-serif", 22),
            )
            .map_err(err)?;
        let panels = root.split_evenly((2, 4));
        for (i, m) in module_names().iter().enumerate() {
            let mut chart = ChartBuilder::on(&panels[i])
                .caption(*m, ("sans-serif", 18))
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(40)
                .build_cartesian_2d((x0 - pad)..(x1 + pad), -0.2f64..1.0f64)
                .map_err(err)?;
            chart.configure_mesh().x_desc("log10 step").light_line_style(WHITE).draw().map_err(err)?;
            for (k, &l) in layers.iter().enumerate() {
                let pts: Vec<(f64, f64)> = steps
                    .iter()
                    .filter_map(|&s| {
                        let w = format!("pretrained@{s}");
                        cell_ci(rows, &w, l, m, power, "pearson").map(|(v, _)| (x(s), v))
                    })
                    .collect();
                let t = if layers.len() > 1 { k as f64 / (layers.len() - 1) as f64 } else { 0.0 };
                let color = HSLColor(0.6, 0.7, 0.25 + 0.5 * t);
                chart.draw_series(LineSeries::new(pts, color.stroke_width(2))).map_err(err)?;
            }
            let control: Vec<f64> = layers
                .iter()
                .filter_map(|&l| cell_ci(rows, "random-init", l, m, power, "pearson").map(|c| c.0))
                .collect();
            if !control.is_empty() {
                let level = super::median(control);
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
    let root = BitMapBackend::new(&path, (1600, 860)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(
            &format!(
                "Along training: NFA (NFM vs AGOP^{power}, solid) and FACT (dashed), Pearson by step; grey band: \
                 random-init control; bars: 95% jackknife"
            ),
            ("sans-serif", 21),
        )
        .map_err(err)?;
    let panels = root.split_evenly((2, 4));
    let shade = |k: usize| {
        let t = if layers.len() > 1 { k as f64 / (layers.len() - 1) as f64 } else { 0.0 };
        HSLColor(0.6, 0.75, 0.62 - 0.42 * t)
    };
    for (i, m) in module_names().iter().enumerate() {
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
        let ys: Vec<f64> = ys.into_iter().filter(|y| y.is_finite()).collect();
        let (lo, hi) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| (a.min(y), b.max(y)));
        // A correlation lies in [−1, 1]; an interval reaching past it is clipped, not allowed to
        // flatten every other line.
        let (lo, hi) = if lo.is_finite() { (lo.max(-1.0), hi.min(1.0)) } else { (0.0, 1.0) };
        let margin = ((hi - lo) * 0.08).max(0.01);
        let mut chart = ChartBuilder::on(&panels[i])
            .caption(
                format!("{m}{}", if head_module_names().contains(m) { " (median over heads)" } else { "" }),
                ("sans-serif", 17),
            )
            .margin(8)
            .x_label_area_size(34)
            .y_label_area_size(52)
            .build_cartesian_2d((s0 - pad)..(s1 + pad), (lo - margin)..(hi + margin))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("training step")
            .y_desc("Pearson")
            .x_labels(6)
            .y_labels(6)
            .x_label_formatter(&|x| format!("{x:.0}"))
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
                .label_font(("sans-serif", 13))
                .draw()
                .map_err(err)?;
        }
    }
    // The last panel: the eval loss on the same step axis.
    let last = &panels[7];
    if eval_loss.is_empty() {
        last.draw(&Text::new("no training log (train.parquet) for this run", (20, 40), ("sans-serif", 15)))
            .map_err(err)?;
    } else {
        let (lo, hi) = eval_loss.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let margin = ((hi - lo) * 0.08).max(0.01);
        let mut chart = ChartBuilder::on(last)
            .caption("eval loss (held-out windows)", ("sans-serif", 17))
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
            .x_label_formatter(&|x| format!("{x:.0}"))
            .light_line_style(WHITE)
            .draw()
            .map_err(err)?;
        let pts: Vec<(f64, f64)> = eval_loss.iter().map(|&(s, v)| (s as f64, v)).collect();
        chart.draw_series(LineSeries::new(pts.clone(), BLACK.stroke_width(2))).map_err(err)?;
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, BLACK.filled()))).map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(written)
}
