use super::*;
use crate::dataset::Rng;
use crate::dataset::{clustered, SynthParams};
use crate::exact;
use proptest::prelude::*;

fn data(n: usize, dim: usize, seed: u64) -> (Matrix<f32>, Matrix<f32>) {
    clustered(&SynthParams {
        n,
        queries: 50,
        dim,
        clusters: 20,
        spread: 0.6,
        seed,
    })
    .unwrap()
}

fn params(seed: u64) -> GraphParams {
    GraphParams {
        m: 12,
        ef_construction: 100,
        distance: Distance::L2Sq,
        seed,
    }
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// Exact top-k among ids passing `ok`.
fn truth(base: &Matrix<f32>, q: &[f32], k: usize, ok: impl Fn(u32) -> bool) -> Vec<u32> {
    let mut all: Vec<(f32, u32)> = (0..base.rows as u32)
        .filter(|&i| ok(i))
        .map(|i| (exact::l2_sq(q, base.row(i as usize)), i))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    all.into_iter().take(k).map(|p| p.1).collect()
}

fn recall(found: &[(u32, f32)], truth: &[u32]) -> f64 {
    if truth.is_empty() {
        return 1.0;
    }
    found.iter().filter(|(id, _)| truth.contains(id)).count() as f64 / truth.len() as f64
}

fn mean_recall(
    g: &Graph,
    base: &Matrix<f32>,
    queries: &Matrix<f32>,
    ef: usize,
    filter: Option<&Filter>,
    ok: &dyn Fn(u32) -> bool,
) -> f64 {
    let mut r = 0.0;
    for i in 0..queries.rows {
        let q = queries.row(i);
        let found = g.search(q, 10, ef, filter).unwrap();
        assert!(found.windows(2).all(|w| w[0].1 <= w[1].1), "not sorted");
        for &(id, d) in &found {
            assert!(ok(id), "returned excluded id {id}");
            assert!((d - exact::l2_sq(q, base.row(id as usize))).abs() < 1e-4);
        }
        r += recall(&found, &truth(base, q, 10, ok));
    }
    r / queries.rows as f64
}

#[test]
fn parallel_build_reaches_high_recall() {
    let (base, queries) = data(3000, 32, 1);
    let g = pool(2).install(|| Graph::build(&base, params(7))).unwrap();
    assert_eq!(g.len(), 3000);
    let r = mean_recall(&g, &base, &queries, 64, None, &|_| true);
    assert!(r >= 0.97, "recall {r}");
}

#[test]
fn one_thread_builds_are_identical() {
    let (base, queries) = data(1500, 16, 2);
    let p = pool(1);
    let a = p.install(|| Graph::build(&base, params(3))).unwrap();
    let b = p.install(|| Graph::build(&base, params(3))).unwrap();
    let dir = std::env::temp_dir().join(format!("htg-ann-det-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    a.save(&dir.join("a")).unwrap();
    b.save(&dir.join("b")).unwrap();
    assert_eq!(
        std::fs::read(dir.join("a")).unwrap(),
        std::fs::read(dir.join("b")).unwrap()
    );
    for i in 0..queries.rows {
        let q = queries.row(i);
        assert_eq!(
            a.search(q, 10, 40, None).unwrap(),
            b.search(q, 10, 40, None).unwrap()
        );
    }
    // Another seed draws other levels, so another graph.
    let c = p.install(|| Graph::build(&base, params(4))).unwrap();
    c.save(&dir.join("c")).unwrap();
    assert_ne!(
        std::fs::read(dir.join("a")).unwrap(),
        std::fs::read(dir.join("c")).unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn inserts_one_by_one_and_concurrently_with_searches() {
    let (base, queries) = data(2000, 24, 3);
    let g = Graph::new(24, params(1), 2000).unwrap();
    for i in 0..500 {
        assert_eq!(g.insert(base.row(i)).unwrap(), i as u32);
    }
    std::thread::scope(|s| {
        for t in 0..2 {
            let (g, base) = (&g, &base);
            s.spawn(move || {
                for i in (500 + t..2000).step_by(2) {
                    g.insert(base.row(i)).unwrap();
                }
            });
        }
        let (g, queries) = (&g, &queries);
        s.spawn(move || {
            for _ in 0..5 {
                for i in 0..queries.rows {
                    let r = g.search(queries.row(i), 10, 32, None).unwrap();
                    assert!(r.len() <= 10);
                }
            }
        });
    });
    assert_eq!(g.len(), 2000);
    // Ids were handed out in claim order, not row order: compare by vectors.
    let mut rows = Matrix {
        rows: 2000,
        cols: 24,
        data: Vec::new(),
    };
    for i in 0..2000 {
        rows.data.extend_from_slice(g.vector(i).unwrap());
    }
    let r = mean_recall(&g, &rows, &queries, 64, None, &|_| true);
    assert!(r >= 0.95, "recall {r}");
    assert!(matches!(
        g.insert(base.row(0)),
        Err(AnnError::Full { capacity: 2000 })
    ));
}

#[test]
fn reserve_grows_and_keeps_the_graph() {
    let (base, queries) = data(1000, 16, 4);
    let mut g = Graph::new(16, params(1), 10).unwrap();
    for i in 0..10 {
        g.insert(base.row(i)).unwrap();
    }
    g.reserve(990).unwrap();
    assert_eq!(g.capacity(), 1000);
    for i in 10..1000 {
        g.insert(base.row(i)).unwrap();
    }
    let r = mean_recall(&g, &base, &queries, 64, None, &|_| true);
    assert!(r >= 0.95, "recall {r}");
}

#[test]
fn deleted_ids_are_never_returned_and_compaction_drops_them() {
    let (base, queries) = data(2000, 16, 5);
    let g = Graph::build(&base, params(2)).unwrap();
    let mut rng = Rng::new(9);
    let mut dead = IdSet::new();
    while dead.len() < 600 {
        let id = rng.below(2000) as u32;
        assert_eq!(g.delete(id).unwrap(), dead.insert(id));
    }
    assert_eq!(g.tombstones(), 600);
    assert!(g.needs_compaction(0.25) && !g.needs_compaction(0.5));
    let r = mean_recall(&g, &base, &queries, 64, None, &|id| !dead.contains(id));
    assert!(r >= 0.95, "recall {r}");
    assert!(matches!(g.delete(2000), Err(AnnError::UnknownId { .. })));

    let (c, map) = g.compact().unwrap();
    assert_eq!(c.len(), 1400);
    assert_eq!(c.tombstones(), 0);
    for (old, new) in map.iter().enumerate() {
        assert_eq!(new.is_none(), dead.contains(old as u32));
        if let Some(new) = new {
            assert_eq!(c.vector(*new).unwrap(), base.row(old));
        }
    }
    let back: Vec<u32> = (0..2000u32).filter(|&i| !dead.contains(i)).collect();
    for i in 0..queries.rows {
        let q = queries.row(i);
        let found: Vec<u32> = c
            .search(q, 10, 64, None)
            .unwrap()
            .iter()
            .map(|&(id, _)| back[id as usize])
            .collect();
        let t = truth(&base, q, 10, |id| !dead.contains(id));
        let hits = found.iter().filter(|id| t.contains(id)).count();
        assert!(hits >= 8, "query {i}: {hits}/10");
    }
}

#[test]
fn filtered_search_keeps_recall_at_every_selectivity() {
    let (base, queries) = data(5000, 16, 6);
    let g = pool(2).install(|| Graph::build(&base, params(5))).unwrap();
    let mut rng = Rng::new(11);
    for sel in [0.01, 0.1, 0.5] {
        let set: IdSet = (0..5000u32).filter(|_| rng.uniform() < sel).collect();
        let ok = |id: u32| set.contains(id);
        for plan in [Plan::Auto, Plan::Graph, Plan::Exact] {
            if plan == Plan::Graph && sel < 0.05 {
                continue; // the plan Auto avoids: a traversal that must skip 99% of nodes
            }
            let f = Filter::set(&set).with_plan(plan);
            let r = mean_recall(&g, &base, &queries, 64, Some(&f), &ok);
            assert!(r >= 0.95, "selectivity {sel} {plan:?}: recall {r}");
            let f = Filter::predicate(&ok, None).with_plan(plan);
            let r = mean_recall(&g, &base, &queries, 64, Some(&f), &ok);
            assert!(
                r >= 0.95,
                "selectivity {sel} {plan:?} predicate: recall {r}"
            );
        }
    }
    // Filters and tombstones combine.
    let set: IdSet = (0..2500u32).collect();
    for id in (0..5000).step_by(3) {
        g.delete(id).unwrap();
    }
    let ok = |id: u32| set.contains(id) && !id.is_multiple_of(3);
    let f = Filter::set(&set).with_plan(Plan::Graph);
    let r = mean_recall(&g, &base, &queries, 64, Some(&f), &ok);
    assert!(r >= 0.95, "recall {r}");
    // Nothing allowed: nothing returned.
    let empty = IdSet::new();
    let f = Filter::set(&empty);
    assert!(g
        .search(queries.row(0), 10, 64, Some(&f))
        .unwrap()
        .is_empty());
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("htg-ann-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("index.htg")
}

#[test]
fn saved_and_mapped_graphs_answer_identically() {
    let (base, queries) = data(1500, 20, 7);
    let g = Graph::build(&base, params(6)).unwrap();
    g.delete(3).unwrap();
    let path = tmp("roundtrip");
    let size = g.save(&path).unwrap();
    assert_eq!(size, std::fs::metadata(&path).unwrap().len());
    let on_disk = std::fs::read(&path).unwrap();
    let mut h = Graph::open(&path).unwrap();
    assert!(h.is_file_backed());
    assert_eq!(h.is_read_only(), cfg!(not(unix)));
    assert_eq!((h.len(), h.dim(), h.tombstones()), (1500, 20, 1));
    assert_eq!(h.params(), g.params());
    assert!(h.heap_bytes() < g.heap_bytes() / 2);
    for i in 0..queries.rows {
        let q = queries.row(i);
        assert_eq!(
            g.search(q, 10, 50, None).unwrap(),
            h.search(q, 10, 50, None).unwrap()
        );
    }
    if cfg!(unix) {
        // Copy-on-write: writable at once, full until room is reserved, and the room is
        // there in place: reserving moves nothing.
        assert!(matches!(h.insert(base.row(0)), Err(AnnError::Full { .. })));
        let at = h.vectors.as_ptr();
        h.reserve(1).unwrap();
        assert_eq!(h.vectors.as_ptr(), at, "reserve copied the mapped vectors");
        assert!(h.is_file_backed());
    } else {
        assert!(matches!(h.insert(base.row(0)), Err(AnnError::ReadOnly)));
        h.reserve(1).unwrap();
        assert!(!h.is_read_only());
    }
    assert_eq!(h.insert(base.row(0)).unwrap(), 1500);
    assert_eq!(h.search(base.row(0), 2, 50, None).unwrap().len(), 2);
    // Rewriting a node of the file and linking new ones to it never reaches the file.
    h.delete(7).unwrap();
    h.replace(7, base.row(8)).unwrap();
    h.reserve(199).unwrap();
    for i in 1..200 {
        h.insert(base.row(i)).unwrap();
    }
    assert_eq!(h.vector(7).unwrap(), base.row(8));
    assert_eq!(std::fs::read(&path).unwrap(), on_disk);
    drop(h);
    let again = Graph::open(&path).unwrap();
    assert_eq!((again.len(), again.tombstones()), (1500, 1));
    assert_eq!(again.vector(7).unwrap(), g.vector(7).unwrap());
    for i in 0..queries.rows {
        let q = queries.row(i);
        assert_eq!(
            g.search(q, 10, 50, None).unwrap(),
            again.search(q, 10, 50, None).unwrap()
        );
    }
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

/// Growth past the room an opened file was given moves the graph to owned memory and keeps
/// every node; a second growth inside the new room moves nothing.
#[test]
fn opened_graphs_grow_past_their_room() {
    let (base, _) = data(3000, 12, 17);
    let g = Graph::new(12, params(4), 600).unwrap();
    for i in 0..600 {
        g.insert(base.row(i)).unwrap();
    }
    let path = tmp("grow-room");
    g.save(&path).unwrap();
    let mut h = Graph::open(&path).unwrap();
    // Room at open: 2 × max(600, 1024) rows; 2400 more is past it.
    h.reserve(2400).unwrap();
    assert!(!h.is_file_backed());
    for i in 600..3000 {
        assert_eq!(h.insert(base.row(i)).unwrap() as usize, i);
    }
    for i in (0..3000).step_by(97) {
        assert_eq!(h.vector(i as u32).unwrap(), base.row(i));
        assert_eq!(h.search(base.row(i), 1, 64, None).unwrap()[0].0 as usize, i);
    }
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn damaged_files_are_refused() {
    // Both layouts: an f32 graph checksums its vectors and links through the maps that serve
    // them, a quantised one its links and codes.
    for quantised in [false, true] {
        damaged_file_is_refused(quantised);
    }
}

fn damaged_file_is_refused(quantised: bool) {
    let (base, _) = data(300, 8, 8);
    let mut g = Graph::build(&base, params(1)).unwrap();
    if quantised {
        g.quantize().unwrap();
    }
    let path = tmp(if quantised { "damage-q" } else { "damage" });
    g.save(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    assert!(Graph::open(&path).is_ok());
    let bad = path.with_extension("bad");
    let refuse = |bytes: &[u8], what: &str| {
        std::fs::write(&bad, bytes).unwrap();
        match Graph::open(&bad) {
            Err(AnnError::Format { reason, .. }) => reason,
            Err(e) => panic!("{what}: unexpected error {e}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    };
    for cut in [0, 7, 100, 511, 512, good.len() / 2, good.len() - 1] {
        refuse(&good[..cut], &format!("truncated at {cut}"));
    }
    let mut step = good.len() / 97;
    step = step.max(1);
    let mut accepted = 0;
    for at in (0..good.len()).step_by(step) {
        let mut b = good.clone();
        b[at] ^= 0x20;
        // Padding between sections is not covered by any checksum.
        if let Ok(g2) = std::panic::catch_unwind(|| {
            std::fs::write(&bad, &b).unwrap();
            Graph::open(&bad)
        }) {
            if g2.is_ok() {
                // Only padding bytes may be flipped harmlessly.
                assert!(at >= 512, "header byte {at} flipped unnoticed");
                accepted += 1;
            }
        } else {
            panic!("flipping byte {at} panicked");
        }
    }
    // Padding is a few hundred bytes of a file of tens of kilobytes: nearly every flip lands
    // in a checksummed section and is refused.
    assert!(accepted <= 3, "{accepted} flipped bytes accepted");
    let mut b = good.clone();
    b[8] = 2;
    let reason = refuse(&b, "version");
    assert!(reason.contains("version"), "{reason}");
    assert!(refuse(b"not an index", "junk").contains("header"));
    assert!(matches!(
        Graph::open(&path.with_extension("none")),
        Err(AnnError::Io { .. })
    ));
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn quantised_search_rescored_keeps_recall_and_survives_a_round_trip() {
    let (base, queries) = data(3000, 32, 9);
    let mut g = Graph::build(&base, params(8)).unwrap();
    let before = g.heap_bytes();
    g.quantize().unwrap();
    assert!(g.is_quantized());
    let r = mean_recall(&g, &base, &queries, 64, None, &|_| true);
    assert!(r >= 0.95, "recall {r}");
    let path = tmp("quant");
    g.save(&path).unwrap();
    let h = Graph::open(&path).unwrap();
    assert!(h.is_quantized());
    for i in 0..queries.rows {
        let q = queries.row(i);
        assert_eq!(
            g.search(q, 10, 64, None).unwrap(),
            h.search(q, 10, 64, None).unwrap()
        );
    }
    // Mapped, the f32 vectors stay in the page cache: the heap holds little.
    assert!(
        h.heap_bytes() * 4 < before,
        "{} vs {before}",
        h.heap_bytes()
    );
    // Inserting after quantisation encodes the new vector too.
    let mut h = h;
    h.reserve(1).unwrap();
    let id = h.insert(queries.row(0)).unwrap();
    assert_eq!(h.search(queries.row(0), 1, 64, None).unwrap()[0].0, id);
    let mut d = Graph::new(
        4,
        GraphParams {
            distance: Distance::Dot,
            ..params(1)
        },
        4,
    )
    .unwrap();
    assert!(d.quantize().is_err());
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn bad_input_is_an_error() {
    assert!(Graph::new(0, params(1), 10).is_err());
    assert!(Graph::new(4, GraphParams { m: 1, ..params(1) }, 10).is_err());
    assert!(Graph::new(
        4,
        GraphParams {
            m: 300,
            ..params(1)
        },
        10
    )
    .is_err());
    let g = Graph::new(4, params(1), 10).unwrap();
    assert!(g.search(&[0.0; 4], 5, 10, None).unwrap().is_empty());
    assert!(matches!(g.insert(&[0.0; 3]), Err(AnnError::Mismatch(_))));
    assert!(matches!(
        g.insert(&[f32::NAN; 4]),
        Err(AnnError::Mismatch(_))
    ));
    g.insert(&[1.0, 0.0, 0.0, 0.0]).unwrap();
    assert!(matches!(
        g.search(&[0.0; 5], 5, 10, None),
        Err(AnnError::Mismatch(_))
    ));
    assert!(g.search(&[0.0; 4], 0, 10, None).unwrap().is_empty());
    assert_eq!(
        g.search(&[0.0; 4], usize::MAX, usize::MAX, None)
            .unwrap()
            .len(),
        1
    );
    let mut q = Graph::build(&data(50, 4, 1).0, params(1)).unwrap();
    q.quantize().unwrap();
    assert_eq!(q.search(&[0.0; 4], usize::MAX, 10, None).unwrap().len(), 50);
    assert!(matches!(g.vector(1), Err(AnnError::UnknownId { .. })));
    assert!(matches!(
        g.delete(u32::MAX),
        Err(AnnError::UnknownId { .. })
    ));
    let bad = Matrix {
        rows: 2,
        cols: 2,
        data: vec![0.0, 1.0, f32::INFINITY, 0.0],
    };
    assert!(Graph::build(&bad, params(1)).is_err());
}

#[test]
fn dot_distance_ranks_by_inner_product() {
    let (base, queries) = data(1000, 16, 10);
    let p = GraphParams {
        distance: Distance::Dot,
        ..params(1)
    };
    let g = Graph::build(&base, p).unwrap();
    // Unit vectors: the dot ranking is the L2 ranking.
    let mut r = 0.0;
    for i in 0..queries.rows {
        let q = queries.row(i);
        let found = g.search(q, 10, 64, None).unwrap();
        for &(id, d) in &found {
            assert!((d - (1.0 - exact::dot(q, base.row(id as usize)))).abs() < 1e-5);
        }
        r += recall(&found, &truth(&base, q, 10, |_| true));
    }
    assert!(r / queries.rows as f64 >= 0.95);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn results_respect_filters_tombstones_and_order(
        n in 1usize..300,
        dim in 1usize..20,
        seed in 0u64..1000,
        dels in proptest::collection::vec(0u32..300, 0..60),
        modulus in 1u32..7,
        k in 1usize..15,
        quant in any::<bool>(),
    ) {
        let mut rng = Rng::new(seed);
        let base = Matrix {
            rows: n,
            cols: dim,
            data: (0..n * dim).map(|_| rng.normal() as f32).collect(),
        };
        let mut g = Graph::build(&base, GraphParams { m: 4, ef_construction: 32, distance: Distance::L2Sq, seed }).unwrap();
        if quant {
            g.quantize().unwrap();
        }
        for &d in &dels {
            let r = g.delete(d);
            prop_assert_eq!(r.is_ok(), (d as usize) < n);
        }
        let ok = |id: u32| id.is_multiple_of(modulus);
        let q: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
        for plan in [Plan::Auto, Plan::Graph, Plan::Exact] {
            let f = Filter::predicate(&ok, None).with_plan(plan);
            let found = g.search(&q, k, 16, Some(&f)).unwrap();
            prop_assert!(found.len() <= k);
            prop_assert!(found.windows(2).all(|w| w[0].1 <= w[1].1));
            for &(id, d) in &found {
                prop_assert!(ok(id) && !g.is_deleted(id));
                prop_assert!((d - exact::l2_sq(&q, base.row(id as usize))).abs() < 1e-3);
            }
            if plan == Plan::Exact {
                let t = truth(&base, &q, k, |id| ok(id) && !g.is_deleted(id));
                let ids: Vec<u32> = found.iter().map(|p| p.0).collect();
                prop_assert_eq!(ids, t);
            }
        }
        // Unfiltered with ef >= n on a small graph: recall near exact.
        let found = g.search(&q, k, n.max(k), None).unwrap();
        let t = truth(&base, &q, k, |id| !g.is_deleted(id));
        prop_assert!(recall(&found, &t) >= 0.7, "recall {}", recall(&found, &t));
    }

    #[test]
    fn save_then_open_round_trips(n in 1usize..200, dim in 1usize..12, seed in 0u64..100, quant in any::<bool>()) {
        let mut rng = Rng::new(seed);
        let base = Matrix {
            rows: n,
            cols: dim,
            data: (0..n * dim).map(|_| rng.uniform() as f32).collect(),
        };
        let mut g = Graph::build(&base, GraphParams { m: 6, ef_construction: 20, distance: Distance::L2Sq, seed }).unwrap();
        if quant {
            g.quantize().unwrap();
        }
        g.delete((seed % n as u64) as u32).unwrap();
        let path = tmp(&format!("prop-{seed}-{n}-{dim}"));
        g.save(&path).unwrap();
        let h = Graph::open(&path).unwrap();
        for i in 0..5.min(n) {
            let q = base.row(i);
            prop_assert_eq!(g.search(q, 5, 20, None).unwrap(), h.search(q, 5, 20, None).unwrap());
        }
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}

/// Deletes and reuses half the slots with new vectors, round after round: recall on the
/// live set stays at a fresh build's level, and the graph never grows.
#[test]
fn reused_slots_keep_recall_through_churn() {
    let (base, queries) = data(4000, 32, 11);
    let n = 2000;
    let head = Matrix {
        rows: n,
        cols: 32,
        data: base.data[..n * 32].to_vec(),
    };
    let g = pool(2).install(|| Graph::build(&head, params(5))).unwrap();
    // What each slot holds now, as a row of `base`.
    let mut holds: Vec<usize> = (0..n).collect();
    let mut next = n;
    let mut rng = Rng::new(9);
    for _round in 0..4 {
        let mut slots: Vec<u32> = (0..n as u32).filter(|_| rng.uniform() < 0.5).collect();
        slots.truncate(2000);
        for &s in &slots {
            assert!(g.delete(s).unwrap());
        }
        for &s in &slots {
            let row = next % base.rows;
            next += 1;
            g.replace(s, base.row(row)).unwrap();
            holds[s as usize] = row;
        }
        assert_eq!(g.len(), n, "a reuse grew the graph");
        assert_eq!(g.tombstones(), 0);
    }
    let live = Matrix {
        rows: n,
        cols: 32,
        data: holds.iter().flat_map(|&r| base.row(r).to_vec()).collect(),
    };
    let r = mean_recall(&g, &live, &queries, 64, None, &|_| true);
    assert!(r >= 0.95, "recall after churn {r}");
}

#[test]
fn replace_refuses_live_busy_unknown_and_mapped_slots() {
    let (base, _) = data(300, 8, 12);
    let g = Graph::build(&base, params(1)).unwrap();
    assert!(matches!(
        g.replace(3, base.row(4)),
        Err(AnnError::Param(m)) if m.contains("live")
    ));
    assert!(matches!(
        g.replace(999, base.row(4)),
        Err(AnnError::UnknownId { id: 999, .. })
    ));
    g.delete(3).unwrap();
    assert!(matches!(
        g.replace(3, &[1.0; 7]),
        Err(AnnError::Mismatch(_))
    ));
    g.replace(3, base.row(4)).unwrap();
    assert!(!g.is_deleted(3));
    assert_eq!(g.vector(3).unwrap(), base.row(4));
    let path = tmp("replace-mapped");
    g.delete(5).unwrap();
    g.save(&path).unwrap();
    let h = Graph::open(&path).unwrap();
    if cfg!(unix) {
        // Copy-on-write: a slot of the file is reused in place.
        h.replace(5, base.row(6)).unwrap();
        assert_eq!(h.vector(5).unwrap(), base.row(6));
        assert_eq!(h.search(base.row(6), 2, 50, None).unwrap().len(), 2);
    } else {
        assert!(matches!(h.replace(5, base.row(6)), Err(AnnError::ReadOnly)));
    }
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

/// Searches race deletes and reuses of the same slots. Each slot flips between two known
/// vectors, so every hit's distance must be the distance to one of its two, never to a row
/// mid-rewrite, and a slot deleted for good is never returned once the writer is done.
#[test]
fn searches_racing_slot_reuse_see_whole_vectors_only() {
    let dim = 48;
    let (base, queries) = data(3000, dim, 13);
    let n = 1500;
    let head = Matrix {
        rows: n,
        cols: dim,
        data: base.data[..n * dim].to_vec(),
    };
    for quant in [false, true] {
        let mut g = Graph::build(&head, params(2)).unwrap();
        if quant {
            g.quantize().unwrap();
        }
        let churn: Vec<u32> = (0..n as u32).step_by(3).collect();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let (g, base, queries, churn, stop) = (&g, &base, &queries, &churn, &stop);
            s.spawn(move || {
                for round in 0..6 {
                    for &slot in churn {
                        g.delete(slot).unwrap();
                        let row = if round % 2 == 0 {
                            n + slot as usize
                        } else {
                            slot as usize
                        };
                        g.replace(slot, base.row(row)).unwrap();
                    }
                }
                for &slot in churn.iter().step_by(2) {
                    g.delete(slot).unwrap();
                }
                stop.store(true, Ordering::Release);
            });
            for _ in 0..2 {
                s.spawn(move || {
                    let mut checked = 0;
                    while !stop.load(Ordering::Acquire) || checked == 0 {
                        for i in 0..queries.rows {
                            let q = queries.row(i);
                            for (id, d) in g.search(q, 10, 40, None).unwrap() {
                                let a = exact::l2_sq(q, base.row(id as usize));
                                let b = exact::l2_sq(q, base.row(n + id as usize));
                                let tol = if quant { 1e-3 } else { 1e-4 };
                                assert!(
                                    (d - a).abs() < tol || (d - b).abs() < tol,
                                    "slot {id}: distance {d} belongs to neither of its vectors ({a}, {b})"
                                );
                                checked += 1;
                            }
                        }
                    }
                });
            }
        });
        for i in 0..queries.rows {
            for (id, _) in g.search(queries.row(i), 10, 40, None).unwrap() {
                assert!(!g.is_deleted(id), "returned deleted slot {id}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any sequence of inserts, deletes and reuses: a search never returns a deleted slot,
    /// every distance is the one to the vector the slot holds now, and a wide search finds
    /// the exact neighbours of the live set.
    #[test]
    fn slot_reuse_never_returns_deleted_or_stale_vectors(
        dim in 1usize..16,
        seed in 0u64..1000,
        ops in proptest::collection::vec((0u8..3, 0u32..120), 1..300),
        quant in any::<bool>(),
    ) {
        let mut rng = Rng::new(seed);
        let mut g = Graph::new(dim, GraphParams { m: 4, ef_construction: 32, distance: Distance::L2Sq, seed }, 400).unwrap();
        let fresh = |rng: &mut Rng| -> Vec<f32> { (0..dim).map(|_| rng.normal() as f32).collect() };
        // The model: what each slot holds, and whether it is live.
        let mut model: Vec<(Vec<f32>, bool)> = Vec::new();
        for _ in 0..8 {
            let v = fresh(&mut rng);
            g.insert(&v).unwrap();
            model.push((v, true));
        }
        if quant {
            g.quantize().unwrap();
        }
        for (kind, x) in ops {
            let slot = x % model.len() as u32;
            match kind {
                0 if model.len() < 400 => {
                    let v = fresh(&mut rng);
                    prop_assert_eq!(g.insert(&v).unwrap() as usize, model.len());
                    model.push((v, true));
                }
                1 => {
                    let was = g.delete(slot).unwrap();
                    prop_assert_eq!(was, model[slot as usize].1);
                    model[slot as usize].1 = false;
                }
                _ => {
                    let v = fresh(&mut rng);
                    let r = g.replace(slot, &v);
                    prop_assert_eq!(r.is_ok(), !model[slot as usize].1);
                    if r.is_ok() {
                        model[slot as usize] = (v, true);
                    }
                }
            }
        }
        let live = model.iter().filter(|m| m.1).count();
        prop_assert_eq!(g.tombstones(), model.len() - live);
        let base = Matrix {
            rows: model.len(),
            cols: dim,
            data: model.iter().flat_map(|m| m.0.clone()).collect(),
        };
        for _ in 0..5 {
            let q = fresh(&mut rng);
            let k = 5;
            let found = g.search(&q, k, model.len(), None).unwrap();
            prop_assert!(found.windows(2).all(|w| w[0].1 <= w[1].1));
            for &(id, d) in &found {
                prop_assert!(model[id as usize].1, "returned deleted slot {}", id);
                prop_assert!((d - exact::l2_sq(&q, base.row(id as usize))).abs() < 1e-3);
            }
            let t = truth(&base, &q, k, |id| model[id as usize].1);
            prop_assert!(recall(&found, &t) >= 0.7, "recall {}", recall(&found, &t));
        }
    }
}
