//! SVG plots over one or more `bench index` reports (htg's and the peers'), and
//! `htg bench plot`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;

use super::args::PlotArgs;
use super::report::{self, BuildResult, IndexReport};

const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn plot_err<E: std::fmt::Debug>(path: &Path) -> impl FnOnce(E) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("drawing {}: {e:?}", path.display())
}

/// Every (label, build) across reports, in order.
fn series(reports: &[IndexReport]) -> Vec<(String, &BuildResult)> {
    reports
        .iter()
        .flat_map(|r| r.builds.iter())
        .map(|b| (report::label(b), b))
        .collect()
}

fn title(reports: &[IndexReport]) -> String {
    let d = &reports[0].dataset;
    let m = &reports[0].machine;
    format!(
        "{} ({} x {}, {} queries), {} cores",
        d.name, d.n, d.dim, d.queries, m.cores
    )
}

/// Draws `<prefix>-recall-qps.svg` and `<prefix>-latency.svg` into `dir`; returns their paths.
pub fn draw(reports: &[IndexReport], dir: &Path, prefix: &str) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let all = series(reports);
    if all.is_empty() {
        anyhow::bail!("the reports hold no builds to plot");
    }
    let points = || {
        all.iter()
            .flat_map(|(_, b)| b.searches.iter())
            .filter(|q| q.qps_1t > 0.0 && q.p50_us > 0.0)
    };
    let rmin = points()
        .map(|q| q.recall_at_10)
        .fold(1.0f64, f64::min)
        .clamp(0.0, 0.99);
    let x0 = (rmin * 20.0).floor() / 20.0;
    let (qlo, qhi) = points().fold((f64::MAX, 0.0f64), |(lo, hi), q| {
        (lo.min(q.qps_1t), hi.max(q.qps_1t))
    });
    let (llo, lhi) = points().fold((f64::MAX, 0.0f64), |(lo, hi), q| {
        (lo.min(q.p50_us), hi.max(q.p99_us))
    });
    let name = title(reports);
    let mut written = Vec::new();

    let path = dir.join(format!("{prefix}-recall-qps.svg"));
    {
        let root = SVGBackend::new(&path, (760, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err(&path))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("recall@10 vs QPS (1 thread): {name}"),
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..1.0f64, ((qlo * 0.8)..(qhi * 1.25)).log_scale())
            .map_err(plot_err(&path))?;
        chart
            .configure_mesh()
            .max_light_lines(0)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("recall@10")
            .y_desc("queries/s, one thread (log)")
            .draw()
            .map_err(plot_err(&path))?;
        for (i, (label, b)) in all.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            let pts: Vec<(f64, f64)> = b
                .searches
                .iter()
                .filter(|q| q.qps_1t > 0.0)
                .map(|q| (q.recall_at_10.max(x0), q.qps_1t))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(plot_err(&path))?
                .label(label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))
                .map_err(plot_err(&path))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 11))
            .draw()
            .map_err(plot_err(&path))?;
        root.present().map_err(plot_err(&path))?;
    }
    written.push(path);

    let path = dir.join(format!("{prefix}-latency.svg"));
    {
        let root = SVGBackend::new(&path, (760, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err(&path))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("latency p50 (lines) and p99 (crosses) vs recall@10: {name}"),
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..1.0f64, ((llo * 0.8)..(lhi * 1.25)).log_scale())
            .map_err(plot_err(&path))?;
        chart
            .configure_mesh()
            .max_light_lines(0)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("recall@10")
            .y_desc("microseconds per query (log)")
            .draw()
            .map_err(plot_err(&path))?;
        for (i, (label, b)) in all.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            let qs: Vec<_> = b.searches.iter().filter(|q| q.p50_us > 0.0).collect();
            let p50: Vec<(f64, f64)> = qs
                .iter()
                .map(|q| (q.recall_at_10.max(x0), q.p50_us))
                .collect();
            let p99: Vec<(f64, f64)> = qs
                .iter()
                .map(|q| (q.recall_at_10.max(x0), q.p99_us))
                .collect();
            chart
                .draw_series(LineSeries::new(p50, c.stroke_width(2)))
                .map_err(plot_err(&path))?
                .label(label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                });
            chart
                .draw_series(p99.into_iter().map(|p| Cross::new(p, 3, c.stroke_width(1))))
                .map_err(plot_err(&path))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 11))
            .draw()
            .map_err(plot_err(&path))?;
        root.present().map_err(plot_err(&path))?;
    }
    written.push(path);
    Ok(written)
}

/// `htg bench plot`: plots and the ratio table over several reports.
pub fn run(a: PlotArgs) -> Result<()> {
    let reports = a
        .reports
        .iter()
        .map(|p| IndexReport::load(p))
        .collect::<Result<Vec<_>>>()?;
    let first = &reports[0].dataset;
    for (r, p) in reports.iter().zip(&a.reports).skip(1) {
        let d = &r.dataset;
        if (d.n, d.dim, d.queries) != (first.n, first.dim, first.queries) {
            anyhow::bail!(
                "{} measured {} ({} x {}, {} queries), the first report {} ({} x {}, {} queries): compare runs on the same data set",
                p.display(),
                d.name,
                d.n,
                d.dim,
                d.queries,
                first.name,
                first.n,
                first.dim,
                first.queries
            );
        }
    }
    let builds: Vec<BuildResult> = reports.iter().flat_map(|r| r.builds.clone()).collect();
    print!("{}", report::table(&builds));
    println!();
    print!("{}", report::ratio_table(&builds, a.target_recall));
    for p in draw(&reports, &a.out, &a.prefix)? {
        println!("wrote {}", p.display());
    }
    Ok(())
}
