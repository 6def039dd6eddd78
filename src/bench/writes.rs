//! `htg bench writes`: what an acknowledged write costs as the index grows, and what writes
//! do to concurrent searches. Runs the production path (`LocalIndex`: write-ahead log, group
//! commit, background checkpoints) in this process on synthetic vectors.
//!
//! Per stored size N: build an index of N clustered unit vectors (bulk inserts, then a
//! checkpoint, not timed), then for each writer count W: W threads add one image at a time
//! for `--seconds`, each add timed from call to durable return; meanwhile one thread searches
//! (k=10, ef=64) and its latencies are compared with a quiet pass before the writes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use anyhow::{Context, Result};
use htg_ann::dataset::{self, SynthParams};
use htg_ann::stats;
use htg_retrieval::index::CreateOptions;
use htg_retrieval::{HnswParams, LocalIndex, SearchIndex, SearchOptions};

use super::sweep::synthetic_record;
use serde::Serialize;

use super::args::WritesArgs;
use super::machine::{rss_mib, Machine};

/// One (stored size, writers) point.
#[derive(Debug, Serialize)]
pub struct WritePoint {
    /// Vectors stored before the timed writes.
    pub stored: usize,
    /// Concurrent writer threads.
    pub writers: usize,
    /// Acknowledged adds per second, all writers together.
    pub adds_per_s: f64,
    /// Per-add latency percentiles, milliseconds.
    pub add_p50_ms: f64,
    /// 99th percentile.
    pub add_p99_ms: f64,
    /// Search latency p50/p99 (ms) on a quiet index, just before.
    pub quiet_search_p50_ms: f64,
    /// 99th percentile, quiet.
    pub quiet_search_p99_ms: f64,
    /// Search latency p50/p99 (ms) while the writers ran.
    pub busy_search_p50_ms: f64,
    /// 99th percentile, during writes.
    pub busy_search_p99_ms: f64,
    /// Seconds to build the stored vectors (bulk, parallel) and checkpoint.
    pub build_s: f64,
    /// Seconds to reopen the index and answer one search.
    pub reopen_first_answer_s: f64,
    /// Checkpoints that ran during the timed writes.
    pub checkpoints: u64,
    /// With `--churn`: what steady add/delete traffic did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn: Option<ChurnPoint>,
}

/// What `--churn` measures beside the adds.
#[derive(Debug, Serialize)]
pub struct ChurnPoint {
    /// Acknowledged deletes per second, all writers together.
    pub deletes_per_s: f64,
    /// Per-delete latency percentiles, milliseconds.
    pub delete_p50_ms: f64,
    /// 99th percentile.
    pub delete_p99_ms: f64,
    /// 99th percentile of every write, adds and deletes together.
    pub write_p99_ms: f64,
    /// The longest single write: the longest a writer waited.
    pub write_max_ms: f64,
    /// When that write started, seconds into the timed writes (a pause at 0 is the first
    /// write after the reopen; one later is the steady state's).
    pub write_max_at_s: f64,
    /// Writes that took longer than 100 ms.
    pub writes_over_100ms: usize,
    /// Resident memory when the timed writes started, MiB.
    pub rss_start_mib: f64,
    /// Highest resident memory sampled (every 50 ms) during them, MiB.
    pub rss_peak_mib: f64,
    /// The bench's own vectors (the stored set and the fresh ones to add), resident through
    /// the run, MiB: not the index's memory.
    pub bench_data_mib: f64,
    /// The peak against the start, the bench's own vectors taken out of both: the index's
    /// growth, as a server holding only the index would see it.
    pub rss_peak_ratio: f64,
    /// Images stored at the end (the start's count: the size holds).
    pub count_end: usize,
    /// Deleted slots still in the graph at the end, waiting for an add.
    pub tombstones_end: usize,
    /// Compactions during the writes.
    pub compactions: u64,
    /// Recall@10 (ef 64) against exact search over the live images at the end.
    pub recall_end: f64,
}

/// The JSON report.
#[derive(Debug, Serialize)]
pub struct WritesReport {
    /// `htg-bench-writes/1`.
    pub schema: String,
    /// Where it ran.
    pub machine: Machine,
    /// Engine, dimension, M and ef_construction.
    pub engine: String,
    /// Vector dimension.
    pub dim: usize,
    /// HNSW parameters.
    pub m: usize,
    /// Build candidate list size.
    pub ef_construction: usize,
    /// The points.
    pub points: Vec<WritePoint>,
    /// The command, as `htg ...`.
    pub command: Vec<String>,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Search latencies (ns) of `queries` repeated until `seconds` pass or `stop` is set.
fn search_loop(
    index: &LocalIndex,
    queries: &[Vec<f32>],
    seconds: f64,
    stop: &AtomicBool,
) -> Vec<u64> {
    let opts = SearchOptions {
        ef: Some(64),
        ..Default::default()
    };
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut lat = Vec::new();
    'outer: loop {
        for q in queries {
            if Instant::now() >= end || stop.load(Ordering::Relaxed) {
                break 'outer;
            }
            let t = Instant::now();
            let _ = index.search(q, 10, &opts);
            lat.push(t.elapsed().as_nanos() as u64);
        }
    }
    lat
}

/// Runs `htg bench writes`.
pub fn run(a: WritesArgs) -> Result<()> {
    if a.sizes.is_empty() || a.writers.is_empty() || a.writers.contains(&0) {
        anyhow::bail!("--sizes and --writers need values, writers at least 1");
    }
    let engine = a.engine;
    let params = HnswParams {
        m: a.m,
        ef_construction: a.ef_construction,
    };
    params.validate()?;
    let max = *a.sizes.iter().max().unwrap_or(&0);
    // Under churn every add gets a vector not stored before: a writer that cycles through a
    // small pool stores several copies of each vector, whose ties blur recall against exact
    // search and crowd the graph with zero-distance neighbours. 3,000 per second is above
    // every add rate measured here; past it a writer cycles, and says so.
    let per_writer = if a.churn {
        20_000.max((a.seconds * 3000.0).ceil() as usize)
    } else {
        20_000
    };
    let fresh_needed = a.writers.iter().sum::<usize>() * per_writer + 1000;
    let (base, extra) = dataset::clustered(&SynthParams {
        n: max,
        queries: fresh_needed,
        dim: a.dim,
        seed: a.seed,
        ..SynthParams::default()
    })?;
    let queries: Vec<Vec<f32>> = extra
        .data
        .chunks(a.dim)
        .take(200)
        .map(<[f32]>::to_vec)
        .collect();
    let fresh: Vec<&[f32]> = extra.data.chunks(a.dim).skip(200).collect();
    let bench_data_mib =
        ((base.data.len() + extra.data.len()) * std::mem::size_of::<f32>()) as f64 / 1048576.0;
    let mut points = Vec::new();
    for &n in &a.sizes {
        let dir = match &a.dir {
            Some(d) => d.join(format!("writes-{n}")),
            None => {
                std::env::temp_dir().join(format!("htg-bench-writes-{}-{n}", std::process::id()))
            }
        };
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!(
            "building {n} x {} ({}) in {} ...",
            a.dim,
            engine.name(),
            dir.display()
        );
        let t = Instant::now();
        let index = LocalIndex::create(
            &dir,
            htg_retrieval::ModelId::synthetic(a.dim),
            None,
            &CreateOptions {
                params,
                engine,
                capacity: n,
            },
        )?;
        for (c, chunk) in base.data[..n * a.dim].chunks(a.dim * 10_000).enumerate() {
            let items = chunk
                .chunks(a.dim)
                .enumerate()
                .map(|(i, v)| (synthetic_record(c * 10_000 + i), v.to_vec()))
                .collect();
            index.insert_many(items)?;
        }
        index.flush()?;
        let build_s = t.elapsed().as_secs_f64();
        drop(index);
        let t = Instant::now();
        let index = LocalIndex::open(&dir)?;
        index.search(&queries[0], 10, &SearchOptions::default())?;
        let reopen_first_answer_s = t.elapsed().as_secs_f64();
        eprintln!(
            "  built in {build_s:.1} s; reopened to a first answer in {reopen_first_answer_s:.3} s"
        );
        let mut next_fresh = 0usize;
        for &w in &a.writers {
            let quiet = search_loop(
                &index,
                &queries,
                a.seconds.min(3.0),
                &AtomicBool::new(false),
            );
            let before = index.stats().checkpoints;
            let stop = AtomicBool::new(false);
            let slices: Vec<&[&[f32]]> = (0..w)
                .map(|k| {
                    let s = next_fresh + k * per_writer;
                    &fresh[s.min(fresh.len())..(s + per_writer).min(fresh.len())]
                })
                .collect();
            next_fresh += w * per_writer;
            // Under churn each writer deletes the oldest stored image after each add.
            let victims = Mutex::new(
                index
                    .records()
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect::<VecDeque<u64>>(),
            );
            let compactions_before = index.stats().compactions;
            let rss_start_mib = rss_mib();
            let rss_peak = Mutex::new(rss_start_mib);
            let start = Instant::now();
            let (add_lat, del_lat, worst, busy) = std::thread::scope(|sc| {
                let writers: Vec<_> = slices
                    .iter()
                    .enumerate()
                    .map(|(k, vs)| {
                        let (index, victims) = (&index, &victims);
                        let end = start + Duration::from_secs_f64(a.seconds);
                        let churn = a.churn;
                        sc.spawn(move || {
                            let mut lat = Vec::new();
                            let mut dels = Vec::new();
                            // The longest write and when it started.
                            let mut worst = (0u64, 0f64);
                            let mut timed = |t: Instant, into: &mut Vec<u64>| {
                                let took = t.elapsed().as_nanos() as u64;
                                into.push(took);
                                if took > worst.0 {
                                    worst = (took, (t - start).as_secs_f64());
                                }
                            };
                            let rounds = if churn { usize::MAX } else { vs.len() };
                            for i in 0..rounds {
                                if Instant::now() >= end || vs.is_empty() {
                                    break;
                                }
                                if i == vs.len() && churn {
                                    eprintln!(
                                        "  note: writer {k} used all {} distinct vectors; it cycles from here",
                                        vs.len()
                                    );
                                }
                                let v = vs[i % vs.len()];
                                let t = Instant::now();
                                let id = index
                                    .insert(
                                        synthetic_record(1_000_000_000 + k * 1_000_000 + i),
                                        v,
                                    )
                                    .expect("bench add");
                                timed(t, &mut lat);
                                if churn {
                                    let victim = {
                                        let mut q = victims.lock();
                                        q.push_back(id);
                                        q.pop_front()
                                    };
                                    if let Some(victim) = victim {
                                        let t = Instant::now();
                                        index.remove(victim).expect("bench delete");
                                        timed(t, &mut dels);
                                    }
                                }
                            }
                            (lat, dels, worst)
                        })
                    })
                    .collect();
                let reader = sc.spawn(|| search_loop(&index, &queries, a.seconds * 2.0, &stop));
                let sampler = sc.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let now = rss_mib();
                        let mut peak = rss_peak.lock();
                        *peak = peak.max(now);
                        drop(peak);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                });
                let mut all = Vec::new();
                let mut dels = Vec::new();
                let mut worst = (0u64, 0f64);
                for h in writers {
                    let (l, d, w) = h.join().expect("writer thread");
                    all.extend(l);
                    dels.extend(d);
                    if w.0 > worst.0 {
                        worst = w;
                    }
                }
                stop.store(true, Ordering::Relaxed);
                sampler.join().expect("memory sampler thread");
                (all, dels, worst, reader.join().expect("reader thread"))
            });
            let secs = start.elapsed().as_secs_f64();
            let churn = if a.churn {
                index.wait_indexed()?;
                let opts = SearchOptions {
                    ef: Some(64),
                    ..Default::default()
                };
                let mut hit = 0usize;
                let mut want = 0usize;
                for q in &queries {
                    let truth: Vec<u64> = index
                        .search_exact(q, 10, &opts)
                        .into_iter()
                        .map(|h| h.0)
                        .collect();
                    let found = index.search(q, 10, &opts)?;
                    hit += found.iter().filter(|h| truth.contains(&h.id)).count();
                    want += truth.len();
                }
                let writes: Vec<u64> = add_lat.iter().chain(&del_lat).copied().collect();
                let end = index.stats();
                let rss_peak_mib = *rss_peak.lock();
                Some(ChurnPoint {
                    deletes_per_s: del_lat.len() as f64 / secs,
                    delete_p50_ms: ms(stats::percentile(&del_lat, 50.0)),
                    delete_p99_ms: ms(stats::percentile(&del_lat, 99.0)),
                    write_p99_ms: ms(stats::percentile(&writes, 99.0)),
                    write_max_ms: ms(worst.0),
                    write_max_at_s: worst.1,
                    writes_over_100ms: writes.iter().filter(|&&n| n > 100_000_000).count(),
                    rss_start_mib,
                    rss_peak_mib,
                    bench_data_mib,
                    rss_peak_ratio: (rss_peak_mib - bench_data_mib)
                        / (rss_start_mib - bench_data_mib).max(1e-9),
                    count_end: end.count,
                    tombstones_end: end.tombstones,
                    compactions: end.compactions - compactions_before,
                    recall_end: hit as f64 / want.max(1) as f64,
                })
            } else {
                None
            };
            let p = WritePoint {
                stored: n,
                writers: w,
                adds_per_s: add_lat.len() as f64 / secs,
                add_p50_ms: ms(stats::percentile(&add_lat, 50.0)),
                add_p99_ms: ms(stats::percentile(&add_lat, 99.0)),
                quiet_search_p50_ms: ms(stats::percentile(&quiet, 50.0)),
                quiet_search_p99_ms: ms(stats::percentile(&quiet, 99.0)),
                busy_search_p50_ms: ms(stats::percentile(&busy, 50.0)),
                busy_search_p99_ms: ms(stats::percentile(&busy, 99.0)),
                build_s,
                reopen_first_answer_s,
                checkpoints: index.stats().checkpoints - before,
                churn,
            };
            eprintln!(
                "  {w} writer(s): {:.0} adds/s, add p50 {:.2} ms p99 {:.2} ms; search p99 quiet {:.3} ms, during writes {:.3} ms",
                p.adds_per_s, p.add_p50_ms, p.add_p99_ms, p.quiet_search_p99_ms, p.busy_search_p99_ms
            );
            if let Some(c) = &p.churn {
                eprintln!(
                    "  churn: {:.0} deletes/s, delete p99 {:.2} ms; writes p99 {:.2} ms, longest {:.1} ms at {:.1} s, {} over 100 ms; RSS {:.1} -> peak {:.1} MiB ({:.3}x without the bench's {:.1} MiB of vectors); {} stored, {} tombstones, {} compactions; recall@10 {:.4}",
                    c.deletes_per_s, c.delete_p99_ms, c.write_p99_ms, c.write_max_ms, c.write_max_at_s, c.writes_over_100ms, c.rss_start_mib, c.rss_peak_mib, c.rss_peak_ratio, c.bench_data_mib, c.count_end, c.tombstones_end, c.compactions, c.recall_end
                );
            }
            points.push(p);
        }
        drop(index);
        if a.dir.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    println!("| stored | writers | adds/s | add p50 ms | add p99 ms | search p99 quiet ms | search p99 busy ms | reopen s |");
    println!("|---|---|---|---|---|---|---|---|");
    for p in &points {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.3} | {:.3} | {:.3} |",
            p.stored,
            p.writers,
            p.adds_per_s,
            p.add_p50_ms,
            p.add_p99_ms,
            p.quiet_search_p99_ms,
            p.busy_search_p99_ms,
            p.reopen_first_answer_s
        );
    }
    let report = WritesReport {
        schema: "htg-bench-writes/1".into(),
        machine: Machine::detect(),
        engine: engine.name().into(),
        dim: a.dim,
        m: a.m,
        ef_construction: a.ef_construction,
        points,
        command: std::iter::once("htg".to_string())
            .chain(std::env::args().skip(1))
            .collect(),
    };
    if let Some(json) = &a.json {
        std::fs::write(json, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", json.display()))?;
        println!("wrote {}", json.display());
    }
    Ok(())
}
