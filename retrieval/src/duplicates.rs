//! Near-duplicate groups over a whole index (`htg duplicates`, `GET /duplicates`).
//!
//! The rule, so that a group can be explained: two images are linked when one is among the
//! other's `k` nearest neighbours *and* their distance is at most `max_distance`; a group is
//! a connected component of those links (single linkage). Byte-identical files (one sha256)
//! are linked whatever the search finds. So one k-NN search per distinct content finds every
//! group: O(N · k) searches' worth of work, never the N² pairs.
//!
//! A group whose members all share one sha256 is `exact` (the same file, indexed twice);
//! any other is `near`, and inside it the members that are copies of one another are
//! marked. Each group's representative is its largest image: the most pixels (read from the
//! file's header), then the most bytes, then the lowest id — the copy worth keeping.

use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;

use crate::index::{check_max_distance, IndexError, Record, SearchIndex, SearchOptions};

/// Neighbours looked at per image when the caller names none: a photo rarely has more than
/// a handful of edited copies, and a larger group is still found whole through chains of
/// links.
pub const DEFAULT_NEIGHBOURS: usize = 10;

/// How to look for duplicates.
#[derive(Clone, Debug)]
pub struct DuplicateOptions {
    /// Link images at most this far apart (squared L2 between unit vectors, 0..=4); the
    /// bundled models' calibrated values are in models/README.md.
    pub max_distance: f32,
    /// Neighbours searched per distinct image (1..=1000).
    pub neighbours: usize,
    /// The HNSW candidate list (default: the index's, `max(k, 64)`).
    pub ef: Option<usize>,
    /// Where images added over HTTP are kept (`<sha256>.<ext>`), to size those whose
    /// recorded path is gone.
    pub uploads: Option<std::path::PathBuf>,
}

impl DuplicateOptions {
    /// Options with `max_distance` and the default neighbour count.
    pub fn new(max_distance: f32) -> DuplicateOptions {
        DuplicateOptions {
            max_distance,
            neighbours: DEFAULT_NEIGHBOURS,
            ef: None,
            uploads: None,
        }
    }
}

/// What kind of group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub enum Kind {
    /// Every member is the same file (one sha256).
    Exact,
    /// At least two different files, each within the distance of another member.
    Near,
}

/// One image of a group.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Member {
    /// Record id.
    pub id: u64,
    /// Recorded path.
    pub path: String,
    /// sha256 of its bytes.
    pub sha256: String,
    /// Distance to the group's representative (0 for it and its exact copies).
    pub distance: f32,
    /// Whether another member has the same sha256 (a byte-identical copy).
    pub exact: bool,
    /// Width × height, read from the file's header (absent when the file is gone or
    /// unreadable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pixels: Option<u64>,
    /// File size (absent when the file is gone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// One group: its representative first, then the rest nearest first.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Group {
    /// `exact` (one file, several records) or `near`.
    pub kind: Kind,
    /// Id of the largest member (most pixels, then most bytes, then lowest id).
    pub representative: u64,
    /// Every member, the representative first.
    pub members: Vec<Member>,
}

/// Every group of an index, largest first.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Report {
    /// The distance used.
    pub max_distance: f32,
    /// Neighbours searched per distinct image.
    pub neighbours: usize,
    /// Images in the index.
    pub images: usize,
    /// Searches run (one per distinct sha256).
    pub searches: usize,
    /// Groups of byte-identical files only.
    pub exact_groups: usize,
    /// Groups holding different files.
    pub near_groups: usize,
    /// The groups: most members first, then by representative id.
    pub groups: Vec<Group>,
}

/// Finds every group in `index`; `progress(done, total)` is called as searches finish (from
/// several threads).
pub fn find(
    index: &dyn SearchIndex,
    opts: &DuplicateOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Report, IndexError> {
    check_max_distance(opts.max_distance)?;
    if opts.neighbours == 0 || opts.neighbours > 1000 {
        return Err(IndexError::Param(format!(
            "neighbours = {} is outside 1..=1000",
            opts.neighbours
        )));
    }
    let mut records = index.records();
    records.sort_by_key(|(id, _)| *id);
    let n = records.len();
    let pos: HashMap<u64, usize> = records
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (*id, i))
        .collect();
    let mut uf = UnionFind::new(n);
    // One search per content: byte-identical records share a vector, and are linked here.
    let mut first_of: HashMap<&str, usize> = HashMap::new();
    let mut copies: Vec<usize> = vec![0; n];
    for (i, (_, r)) in records.iter().enumerate() {
        match first_of.get(r.sha256.as_str()) {
            Some(&f) => {
                uf.union(f, i);
                copies[f] += 1;
            }
            None => {
                first_of.insert(&r.sha256, i);
            }
        }
    }
    let mut distinct: Vec<usize> = first_of.values().copied().collect();
    distinct.sort_unstable();
    let search = SearchOptions {
        ef: opts.ef,
        max_distance: Some(opts.max_distance),
        ..SearchOptions::default()
    };
    let total = distinct.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let mut links: Vec<(usize, usize)> = Vec::new();
    // Vectors are fetched in chunks: one round trip per chunk on a remote index.
    for chunk in distinct.chunks(1024) {
        let ids: Vec<u64> = chunk.iter().map(|&i| records[i].0).collect();
        let vectors = index.vectors(&ids);
        let found: Vec<Result<Vec<(usize, usize)>, IndexError>> = chunk
            .par_iter()
            .zip(vectors)
            .map(|(&i, v)| {
                let Some(v) = v else {
                    // Removed since `records()`: nothing to link.
                    return Ok(Vec::new());
                };
                let k = opts.neighbours + 1 + copies[i];
                let hits = index.search(&v, k, &search)?;
                let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                progress(d, total);
                Ok(hits
                    .into_iter()
                    .filter_map(|h| pos.get(&h.id).map(|&j| (i, j)))
                    .filter(|&(i, j)| i != j)
                    .collect())
            })
            .collect();
        for f in found {
            links.extend(f?);
        }
    }
    for (i, j) in links {
        uf.union(i, j);
    }
    let mut components: HashMap<usize, Vec<usize>> = HashMap::new();
    for i in 0..n {
        components.entry(uf.find(i)).or_default().push(i);
    }
    let vectors_of = |members: &[usize]| -> Vec<Option<Vec<f32>>> {
        index.vectors(&members.iter().map(|&i| records[i].0).collect::<Vec<_>>())
    };
    let mut groups: Vec<Group> = components
        .into_values()
        .filter(|m| m.len() > 1)
        .collect::<Vec<_>>()
        .par_iter()
        .map(|members| {
            let vectors = vectors_of(members);
            group(members, &records, &vectors, opts.uploads.as_deref())
        })
        .collect();
    groups.sort_by(|a, b| {
        b.members
            .len()
            .cmp(&a.members.len())
            .then(a.representative.cmp(&b.representative))
    });
    let exact_groups = groups.iter().filter(|g| g.kind == Kind::Exact).count();
    Ok(Report {
        max_distance: opts.max_distance,
        neighbours: opts.neighbours,
        images: n,
        searches: total,
        exact_groups,
        near_groups: groups.len() - exact_groups,
        groups,
    })
}

/// Shapes one component: sizes, the representative, distances to it.
fn group(
    members: &[usize],
    records: &[(u64, Record)],
    vectors: &[Option<Vec<f32>>],
    uploads: Option<&Path>,
) -> Group {
    let mut by_sha: HashMap<&str, usize> = HashMap::new();
    for &i in members {
        *by_sha.entry(records[i].1.sha256.as_str()).or_default() += 1;
    }
    let sizes: Vec<(Option<u64>, Option<u64>)> = members
        .iter()
        .map(|&i| measure(&records[i].1, uploads))
        .collect();
    let rep = (0..members.len())
        .max_by(|&a, &b| {
            let key = |x: usize| (sizes[x].0.unwrap_or(0), sizes[x].1.unwrap_or(0));
            key(a)
                .cmp(&key(b))
                // The lowest id wins a tie: `max_by` keeps the last of equals, so invert.
                .then(records[members[b]].0.cmp(&records[members[a]].0))
        })
        .unwrap_or(0);
    let rep_vector = vectors[rep].as_deref();
    let mut out: Vec<Member> = members
        .iter()
        .enumerate()
        .map(|(x, &i)| {
            let (id, r) = &records[i];
            let distance = match (rep_vector, vectors[x].as_deref()) {
                (Some(a), Some(b)) => crate::index::squared_l2(a, b),
                _ => f32::NAN,
            };
            Member {
                id: *id,
                path: r.path.clone(),
                sha256: r.sha256.clone(),
                distance: if x == rep { 0.0 } else { distance },
                exact: by_sha[r.sha256.as_str()] > 1,
                pixels: sizes[x].0,
                bytes: sizes[x].1,
            }
        })
        .collect();
    let representative = out[rep].id;
    let first = out.remove(rep);
    out.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
    out.insert(0, first);
    Group {
        kind: if by_sha.len() == 1 {
            Kind::Exact
        } else {
            Kind::Near
        },
        representative,
        members: out,
    }
}

/// (pixels, bytes) of a record's file: the recorded path, else its upload copy.
fn measure(r: &Record, uploads: Option<&Path>) -> (Option<u64>, Option<u64>) {
    let mut candidates = vec![std::path::PathBuf::from(&r.path)];
    if let Some(dir) = uploads {
        candidates.extend(
            crate::ingest::IMAGE_EXTENSIONS
                .iter()
                .map(|e| dir.join(format!("{}.{e}", r.sha256))),
        );
    }
    for path in candidates {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let pixels = image::ImageReader::open(&path)
            .ok()
            .and_then(|r| r.with_guessed_format().ok())
            .and_then(|r| r.into_dimensions().ok())
            .map(|(w, h)| u64::from(w) * u64::from(h));
        return (pixels, Some(meta.len()));
    }
    (None, None)
}

/// Disjoint sets with path halving and union by size.
struct UnionFind {
    parent: Vec<usize>,
    size: Vec<usize>,
}

impl UnionFind {
    fn new(n: usize) -> UnionFind {
        UnionFind {
            parent: (0..n).collect(),
            size: vec![1; n],
        }
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    fn union(&mut self, a: usize, b: usize) {
        let (mut a, mut b) = (self.find(a), self.find(b));
        if a == b {
            return;
        }
        if self.size[a] < self.size[b] {
            std::mem::swap(&mut a, &mut b);
        }
        self.parent[b] = a;
        self.size[a] += self.size[b];
    }
}

/// Pairs of ids that share a group: what precision and recall of a grouping are counted
/// over (each unordered pair once, smaller id first).
pub fn pairs(report: &Report) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for g in &report.groups {
        let mut ids: Vec<u64> = g.members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        for (x, &a) in ids.iter().enumerate() {
            for &b in &ids[x + 1..] {
                out.push((a, b));
            }
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::ModelId;
    use crate::index::{CreateOptions, LocalIndex};

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    fn rec(path: &str, sha: &str) -> Record {
        Record {
            path: path.into(),
            sha256: sha.into(),
            label: None,
        }
    }

    #[test]
    fn groups_are_components_within_the_distance_and_exact_copies_are_marked() {
        let dir = tempfile::tempdir().unwrap();
        let idx = LocalIndex::create(
            dir.path(),
            ModelId::synthetic(3),
            None,
            &CreateOptions::default(),
        )
        .unwrap();
        // a ~ a2 (near), a2 ~ a3 (near, chained), b alone, c twice (exact), d far away.
        let a = unit(&[1.0, 0.0, 0.0]);
        let a2 = unit(&[1.0, 0.1, 0.0]);
        let a3 = unit(&[1.0, 0.2, 0.0]);
        let b = unit(&[0.0, 1.0, 0.0]);
        let c = unit(&[0.0, 0.0, 1.0]);
        let d = unit(&[-1.0, -1.0, 0.0]);
        let ids = idx
            .insert_many(vec![
                (rec("a", "sa"), a.clone()),
                (rec("a2", "sa2"), a2),
                (rec("a3", "sa3"), a3),
                (rec("b", "sb"), b),
                (rec("c", "sc"), c.clone()),
                (rec("c-copy", "sc"), c),
                (rec("d", "sd"), d),
                (rec("a-copy", "sa"), a),
            ])
            .unwrap();
        // a–a2 and a2–a3 are ~0.01 apart, a–a3 ~0.04; b and c are 2 from a.
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let report = find(&idx, &DuplicateOptions::new(0.02), &|_, _| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(report.images, 8);
        assert_eq!(report.searches, 6, "one search per distinct sha256");
        assert_eq!(calls.into_inner(), 6);
        assert_eq!(report.groups.len(), 2, "{report:#?}");
        let near = &report.groups[0];
        assert_eq!(near.kind, Kind::Near);
        let mut got: Vec<u64> = near.members.iter().map(|m| m.id).collect();
        got.sort_unstable();
        assert_eq!(got, vec![ids[0], ids[1], ids[2], ids[7]]);
        // No file to size: the lowest id represents.
        assert_eq!(near.representative, ids[0]);
        assert_eq!(near.members[0].id, ids[0]);
        let exact: Vec<bool> = near.members.iter().map(|m| m.exact).collect();
        assert_eq!(
            near.members.iter().filter(|m| m.exact).count(),
            2,
            "{exact:?}"
        );
        assert!(near
            .members
            .windows(2)
            .skip(1)
            .all(|w| w[0].distance <= w[1].distance));
        let copy = &report.groups[1];
        assert_eq!(copy.kind, Kind::Exact);
        assert_eq!(copy.members.len(), 2);
        assert!(copy.members.iter().all(|m| m.exact && m.distance == 0.0));
        assert_eq!((report.near_groups, report.exact_groups), (1, 1));

        // A tighter bound splits the chain; exact copies stay together at any bound.
        let tight = find(&idx, &DuplicateOptions::new(0.0), &|_, _| {}).unwrap();
        assert_eq!(tight.groups.len(), 2);
        assert!(tight.groups.iter().all(|g| g.kind == Kind::Exact));
        assert_eq!(pairs(&tight), vec![(ids[0], ids[7]), (ids[4], ids[5])]);

        for bad in [f32::NAN, -1.0, 4.5] {
            assert!(matches!(
                find(&idx, &DuplicateOptions::new(bad), &|_, _| {}),
                Err(IndexError::Param(_))
            ));
        }
        let mut none = DuplicateOptions::new(1.0);
        none.neighbours = 0;
        assert!(find(&idx, &none, &|_, _| {}).is_err());
    }

    #[test]
    fn the_largest_file_represents_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.png");
        let big = dir.path().join("big.png");
        image::RgbImage::new(4, 4).save(&small).unwrap();
        image::RgbImage::new(8, 2).save(&big).unwrap();
        let idx_dir = dir.path().join("idx");
        let idx = LocalIndex::create(
            &idx_dir,
            ModelId::synthetic(2),
            None,
            &CreateOptions::default(),
        )
        .unwrap();
        let ids = idx
            .insert_many(vec![
                (rec(small.to_str().unwrap(), "s1"), unit(&[1.0, 0.0])),
                (rec(big.to_str().unwrap(), "s2"), unit(&[1.0, 0.05])),
            ])
            .unwrap();
        let report = find(&idx, &DuplicateOptions::new(0.1), &|_, _| {}).unwrap();
        let g = &report.groups[0];
        // 16 pixels each: the tie goes to the larger file, then the lower id.
        assert_eq!(
            g.members.iter().map(|m| m.pixels).collect::<Vec<_>>(),
            vec![Some(16), Some(16)]
        );
        let size = |p: &Path| std::fs::metadata(p).unwrap().len();
        let want = if size(&big) > size(&small) {
            ids[1]
        } else {
            ids[0]
        };
        assert_eq!(g.representative, want);
        // A bigger picture wins whatever the bytes.
        image::RgbImage::new(40, 40).save(&small).unwrap();
        let report = find(&idx, &DuplicateOptions::new(0.1), &|_, _| {}).unwrap();
        assert_eq!(report.groups[0].representative, ids[0]);
        assert_eq!(report.groups[0].members[0].pixels, Some(1600));
    }
}
