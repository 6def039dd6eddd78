//! `htg bench duplicates`: `htg duplicates` over a synthetic index, its time and peak memory.
//!
//! N random unit vectors (pairwise squared distances near 2 in high dimension), of which
//! `planted` get a near copy (the original plus Gaussian noise, renormalised, about
//! `dim · noise²` away): the run reports how many planted pairs it grouped (recall) and how
//! many groups hold anything else (none should, at a bound far below 2).

use std::time::Instant;

use anyhow::Result;
use htg_ann::dataset::Rng;
use htg_retrieval::duplicates::{self, DuplicateOptions};
use htg_retrieval::index::CreateOptions;
use htg_retrieval::{LocalIndex, Record, SearchIndex as _};
use serde::Serialize;

use crate::bench::args::DuplicatesArgs;
use crate::bench::machine::{peak_rss_mib, rss_mib};

#[derive(Serialize)]
struct Report {
    n: usize,
    dim: usize,
    planted: usize,
    noise: f64,
    max_distance: f32,
    neighbours: usize,
    threads: usize,
    build_s: f64,
    duplicates_s: f64,
    searches_per_s: f64,
    rss_before_mib: f64,
    peak_rss_during_mib: f64,
    groups: usize,
    planted_pairs_grouped: usize,
    recall: f64,
    other_groups: usize,
}

fn unit(rng: &mut Rng, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
    let n = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// Builds the index, runs [`duplicates::find`] once, prints and writes the report.
pub fn run(a: DuplicatesArgs) -> Result<()> {
    anyhow::ensure!(
        a.planted <= a.n,
        "--planted {} is above --n {}",
        a.planted,
        a.n
    );
    let dir = tempfile::Builder::new().prefix("htg-bench-dup").tempdir()?;
    let mut rng = Rng::new(a.seed);
    let t = Instant::now();
    let index = LocalIndex::create(
        dir.path(),
        htg_retrieval::ModelId::synthetic(a.dim),
        None,
        &CreateOptions {
            capacity: a.n + a.planted,
            ..CreateOptions::default()
        },
    )?;
    let rec = |i: usize| Record {
        path: format!("synthetic/{i}"),
        sha256: format!("{i:064x}"),
        label: None,
    };
    let mut base = Vec::with_capacity(a.n);
    let mut items = Vec::new();
    for i in 0..a.n {
        let v = unit(&mut rng, a.dim);
        if i < a.planted {
            base.push(v.clone());
        }
        items.push((rec(i), v));
        if items.len() == 10_000 {
            index.insert_many(std::mem::take(&mut items))?;
        }
    }
    for (p, v) in base.iter().enumerate() {
        let mut c: Vec<f32> = v
            .iter()
            .map(|x| x + (rng.normal() * a.noise) as f32)
            .collect();
        let n = c.iter().map(|x| x * x).sum::<f32>().sqrt();
        c.iter_mut().for_each(|x| *x /= n);
        items.push((rec(a.n + p), c));
        if items.len() == 10_000 {
            index.insert_many(std::mem::take(&mut items))?;
        }
    }
    index.insert_many(items)?;
    index.wait_indexed()?;
    let build_s = t.elapsed().as_secs_f64();
    eprintln!("built {} vectors in {build_s:.1} s", index.len());

    // Peak memory of the run alone: VmHWM is reset to the current RSS first (Linux).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before_mib = rss_mib();
    let mut opts = DuplicateOptions::new(a.max_distance);
    opts.neighbours = a.neighbours;
    let t = Instant::now();
    let report = duplicates::find(&index, &opts, &|_, _| {})?;
    let duplicates_s = t.elapsed().as_secs_f64();
    let peak = peak_rss_mib();

    // Ids are assigned in insertion order: planted copy p is id n + p, its original id p.
    let ids: Vec<u64> = {
        let mut r: Vec<u64> = index.records().into_iter().map(|(id, _)| id).collect();
        r.sort_unstable();
        r
    };
    let pairs = duplicates::pairs(&report);
    let planted_pairs: std::collections::HashSet<(u64, u64)> =
        (0..a.planted).map(|p| (ids[p], ids[a.n + p])).collect();
    let grouped = pairs.iter().filter(|p| planted_pairs.contains(p)).count();
    let other_groups = report
        .groups
        .iter()
        .filter(|g| {
            g.members.len() != 2 || {
                let (x, y) = (
                    g.members[0].id.min(g.members[1].id),
                    g.members[0].id.max(g.members[1].id),
                );
                !planted_pairs.contains(&(x, y))
            }
        })
        .count();
    let r = Report {
        n: a.n + a.planted,
        dim: a.dim,
        planted: a.planted,
        noise: a.noise,
        max_distance: a.max_distance,
        neighbours: a.neighbours,
        threads: rayon::current_num_threads(),
        build_s,
        duplicates_s,
        searches_per_s: report.searches as f64 / duplicates_s,
        rss_before_mib,
        peak_rss_during_mib: peak,
        groups: report.groups.len(),
        planted_pairs_grouped: grouped,
        recall: if a.planted == 0 {
            1.0
        } else {
            grouped as f64 / a.planted as f64
        },
        other_groups,
    };
    println!(
        "duplicates over {} vectors ({}-d, {} threads): {duplicates_s:.2} s ({:.0} searches/s), RSS {rss_before_mib:.0} MiB before, peak {peak:.0} MiB during; {} groups, {grouped}/{} planted pairs (recall {:.4}), {other_groups} other groups",
        r.n, r.dim, r.threads, r.searches_per_s, r.groups, a.planted, r.recall
    );
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&r)? + "\n")?;
    }
    Ok(())
}
