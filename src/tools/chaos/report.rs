//! The report of a chaos run: `timeline.json` (every sample, the fault
//! spans, the measured rate and the proof) and `timeline.svg`, four panels
//! on one time axis (rates; level; lag and spill; shed) with the faults
//! shaded. The SVG is written by hand: a few polylines and rectangles do
//! not justify a plotting library's dependency tree in every build.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::ChaosError;
use super::proof::Proof;
use super::watch::{FaultSpan, Sample};

#[derive(Serialize)]
pub struct Report<'a> {
    pub scenario: &'a str,
    pub sustainable_rate: u64,
    pub overload_rate: u64,
    pub daemon_runs: u32,
    pub samples: &'a [Sample],
    pub faults: &'a [FaultSpan],
    pub proof: &'a Proof,
    pub passed: bool,
}

pub fn write(dir: &Path, r: &Report<'_>) -> Result<(), ChaosError> {
    let io = |what| move |source| ChaosError::Io { what, source };
    std::fs::create_dir_all(dir).map_err(io("creating the report directory"))?;
    let json = serde_json::to_vec_pretty(r).map_err(|e| ChaosError::Daemon(e.to_string()))?;
    std::fs::write(dir.join("timeline.json"), json).map_err(io("writing timeline.json"))?;
    std::fs::write(dir.join("timeline.svg"), svg(r.samples, r.faults))
        .map_err(io("writing timeline.svg"))?;
    Ok(())
}

const W: f64 = 1000.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const PANEL_H: f64 = 130.0;
const GAP: f64 = 30.0;
const TOP: f64 = 40.0;

/// One series: name, colour, values.
type Series<'a> = (&'a str, &'a str, Vec<f64>);

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The timeline picture.
pub fn svg(samples: &[Sample], faults: &[FaultSpan]) -> String {
    let t_end = samples.last().map_or(1.0, |s| s.t).max(1.0);
    let x = |t: f64| LEFT + (t / t_end) * (W - LEFT - RIGHT);
    let panels: Vec<(&str, Vec<Series<'_>>, Option<f64>)> = vec![
        (
            "trades/s",
            vec![
                (
                    "offered",
                    "#d62728",
                    samples.iter().map(|s| s.offered_rate).collect(),
                ),
                (
                    "delivered",
                    "#ff7f0e",
                    samples.iter().map(|s| s.delivered_rate).collect(),
                ),
                (
                    "stored",
                    "#2ca02c",
                    samples.iter().map(|s| s.stored_rate).collect(),
                ),
            ],
            None,
        ),
        (
            "level",
            vec![(
                "level (0 NORMAL .. 4 CIRCUIT_BREAK)",
                "#9467bd",
                samples.iter().map(|s| f64::from(s.level_n)).collect(),
            )],
            Some(4.0),
        ),
        (
            "records",
            vec![
                (
                    "consumer lag",
                    "#1f77b4",
                    samples.iter().map(|s| s.lag.max(0) as f64).collect(),
                ),
                (
                    "spill pending",
                    "#8c564b",
                    samples.iter().map(|s| s.spill_pending as f64).collect(),
                ),
            ],
            None,
        ),
        (
            "shed",
            vec![(
                "shed (cumulative, tiers 2-3)",
                "#e377c2",
                samples.iter().map(|s| s.shed as f64).collect(),
            )],
            None,
        ),
    ];
    let h = TOP + panels.len() as f64 * (PANEL_H + GAP) + 20.0;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{LEFT}" y="18" font-size="14">ticklake chaos: offered and stored rate, level, lag, spill and shed; faults shaded</text>"#
    );
    // Faults: shaded over every panel, named at the top.
    let bottom = h - 20.0;
    for (k, f) in faults.iter().enumerate() {
        let x0 = x(f.start);
        let x1 = x(f.end.unwrap_or(t_end)).max(x0 + 1.0);
        let _ = writeln!(
            o,
            r##"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="#f2b134" fill-opacity="0.18"/>"##,
            x1 - x0,
            bottom - TOP
        );
        let _ = writeln!(
            o,
            r##"<text x="{:.1}" y="{:.1}" fill="#8a5a00">{}</text>"##,
            x0 + 2.0,
            TOP - 4.0 + if k % 2 == 0 { 0.0 } else { -10.0 } + 10.0,
            esc(&f.name)
        );
    }
    for (p, (unit, series, fixed_max)) in panels.iter().enumerate() {
        let y0 = TOP + 14.0 + p as f64 * (PANEL_H + GAP);
        let max = fixed_max.unwrap_or_else(|| {
            series
                .iter()
                .flat_map(|(_, _, v)| v.iter().copied())
                .fold(0.0f64, f64::max)
                .max(1.0)
        });
        let y = |v: f64| y0 + PANEL_H - (v / max).clamp(0.0, 1.0) * PANEL_H;
        let _ = writeln!(
            o,
            r##"<rect x="{LEFT}" y="{y0}" width="{:.1}" height="{PANEL_H}" fill="none" stroke="#999"/>"##,
            W - LEFT - RIGHT
        );
        let _ = writeln!(
            o,
            r#"<text x="4" y="{:.1}">{}</text><text x="4" y="{:.1}">{max:.0}</text><text x="4" y="{:.1}">0</text>"#,
            y0 + PANEL_H / 2.0,
            esc(unit),
            y0 + 10.0,
            y0 + PANEL_H
        );
        for (k, (name, colour, values)) in series.iter().enumerate() {
            let points: Vec<String> = samples
                .iter()
                .zip(values)
                .map(|(s, v)| format!("{:.1},{:.1}", x(s.t), y(*v)))
                .collect();
            let _ = writeln!(
                o,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
                points.join(" ")
            );
            let _ = writeln!(
                o,
                r#"<text x="{:.1}" y="{:.1}" fill="{colour}">{}</text>"#,
                LEFT + 8.0 + k as f64 * 150.0,
                y0 + 12.0,
                esc(name)
            );
        }
    }
    // The time axis.
    let step = (t_end / 10.0).ceil().max(1.0);
    let mut t = 0.0;
    while t <= t_end {
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{t:.0}s</text>"#,
            x(t),
            bottom + 12.0
        );
        t += step;
    }
    o.push_str("</svg>\n");
    o
}
