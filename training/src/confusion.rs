//! Which unseen classes a model confuses with which: the hard pairs behind `htg eval
//! --hard-pairs`.
//!
//! Averages such as R@1 say how often a model fails, not where; a person choosing between two
//! models wants the classes each one mixes up. Every query's nearest neighbour comes from
//! [`eval::top1`] (the rule R@1 and the paired tests use), so the counts here add up to the
//! misses behind R@1: the sum of all pair counts is `queries − top-1 hits`.
//!
//! Ranking of the ordered pairs (A, B), A ≠ B: by **count** (how many of A's queries retrieve
//! a B image first), then by the mean margin of those misses (how much closer, in squared
//! distance, the B image was than the nearest A image: the most confidently wrong first),
//! then by labels. Count rather than rate, because a rate of 1/1 and one of 40/40 are not
//! the same evidence; the rate (count / queries of A) is reported beside it. On emoji, where
//! every class has one query, all counts are 1 and the margin decides.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::eval::{self, Top1};
use crate::TrainError;

/// Misses kept per pair as examples (largest margin first), for the report's thumbnails.
pub const EXAMPLES_PER_PAIR: usize = 3;

/// One query whose nearest neighbour has another class.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Miss {
    /// Index of the query (in the query set, or the leave-one-out set).
    pub query: usize,
    /// Index of the image it retrieved first (in the gallery, or the leave-one-out set).
    pub retrieved: usize,
    /// Squared distance to the nearest image of the query's class minus the squared distance
    /// to the retrieved image (≥ 0); `None` when the gallery holds no image of that class.
    pub margin: Option<f32>,
}

/// How often class `from`'s queries retrieve class `to` first.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConfusedPair {
    /// Evaluation label of the queries' class (A).
    pub from: usize,
    /// Evaluation label of the class retrieved first (B).
    pub to: usize,
    /// Name of A.
    pub from_name: String,
    /// Name of B.
    pub to_name: String,
    /// A's queries whose nearest neighbour is a B image.
    pub count: usize,
    /// A's queries in all.
    pub from_queries: usize,
    /// `count / from_queries`.
    pub rate: f64,
    /// The same count the other way round (B's queries retrieving A first): a pair confused
    /// both ways is a pair the embedding cannot tell apart, not a one-sided pull.
    pub reverse_count: usize,
    /// Mean [`Miss::margin`] over the misses that have one (0 when none has).
    pub mean_margin: f64,
    /// Up to [`EXAMPLES_PER_PAIR`] misses, largest margin first.
    pub examples: Vec<Miss>,
}

/// R@1 of one unseen class.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClassRecall {
    /// Evaluation label.
    pub class: usize,
    /// Class name.
    pub name: String,
    /// Queries of the class.
    pub queries: usize,
    /// Of those, queries whose nearest neighbour has the class.
    pub hits: usize,
    /// `hits / queries`.
    pub recall_at_1: f64,
}

/// The confusions of one model on one evaluation split.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Confusion {
    /// Queries evaluated.
    pub queries: usize,
    /// Queries whose nearest neighbour has their class.
    pub top1_hits: usize,
    /// Ordered class pairs confused at least once.
    pub confused_pairs: usize,
    /// How [`Confusion::pairs`] is ranked, in words, so the JSON explains itself.
    pub ranking: String,
    /// The top pairs, hardest first.
    pub pairs: Vec<ConfusedPair>,
    /// R@1 of every class that has queries, by label.
    pub per_class: Vec<ClassRecall>,
    /// Every nonzero `(from, to, count)`, so a second model's report can look up this
    /// model's count for its own top pairs.
    pub all_counts: Vec<(usize, usize, usize)>,
}

impl Confusion {
    /// How many of `from`'s queries retrieve `to` first (0 when never).
    pub fn count(&self, from: usize, to: usize) -> usize {
        self.all_counts
            .binary_search_by(|&(f, t, _)| (f, t).cmp(&(from, to)))
            .map_or(0, |i| self.all_counts[i].2)
    }
}

/// The ranking rule, as [`Confusion::ranking`] records it.
pub const RANKING: &str = "count of A's queries whose nearest neighbour is a B image, \
     then mean margin (squared distance to the nearest A image minus that to the B image), \
     then labels";

/// Counts the confusions of `top1` (one entry per query, from [`eval::top1`]) and keeps the
/// `n` hardest pairs. `names[label]` names a class (a missing name falls back to the label).
pub fn count_confusions(
    query_labels: &[usize],
    gallery_labels: &[usize],
    top1: &[Top1],
    names: &[String],
    n: usize,
) -> Result<Confusion, TrainError> {
    if n == 0 {
        return Err(TrainError::Eval(
            "asked for 0 hard pairs; ask for at least 1".into(),
        ));
    }
    if top1.len() != query_labels.len() {
        return Err(TrainError::Eval(format!(
            "{} nearest neighbours for {} queries",
            top1.len(),
            query_labels.len()
        )));
    }
    let name = |l: usize| names.get(l).cloned().unwrap_or_else(|| l.to_string());
    let mut per_class: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    let mut misses: BTreeMap<(usize, usize), Vec<Miss>> = BTreeMap::new();
    for (q, (t, &a)) in top1.iter().zip(query_labels).enumerate() {
        let b = *gallery_labels.get(t.retrieved).ok_or_else(|| {
            TrainError::Eval(format!("query {q} retrieved gallery item {}", t.retrieved))
        })?;
        let c = per_class.entry(a).or_default();
        c.0 += 1;
        if a == b {
            c.1 += 1;
        } else {
            misses.entry((a, b)).or_default().push(Miss {
                query: q,
                retrieved: t.retrieved,
                margin: t.same_class_distance.map(|s| s - t.distance),
            });
        }
    }
    let all_counts: Vec<(usize, usize, usize)> =
        misses.iter().map(|(&(a, b), m)| (a, b, m.len())).collect();
    let mean_margin = |m: &[Miss]| {
        let v: Vec<f64> = m.iter().filter_map(|x| x.margin).map(f64::from).collect();
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let mut pairs: Vec<ConfusedPair> = misses
        .into_iter()
        .map(|((a, b), mut m)| {
            m.sort_by(|x, y| {
                let key = |z: &Miss| z.margin.unwrap_or(f32::NEG_INFINITY);
                key(y).total_cmp(&key(x)).then(x.query.cmp(&y.query))
            });
            let from_queries = per_class[&a].0;
            let mean_margin = mean_margin(&m);
            let count = m.len();
            m.truncate(EXAMPLES_PER_PAIR);
            ConfusedPair {
                from: a,
                to: b,
                from_name: name(a),
                to_name: name(b),
                count,
                from_queries,
                rate: count as f64 / from_queries as f64,
                reverse_count: 0,
                mean_margin,
                examples: m,
            }
        })
        .collect();
    let confused_pairs = pairs.len();
    pairs.sort_by(|x, y| {
        y.count
            .cmp(&x.count)
            .then(y.mean_margin.total_cmp(&x.mean_margin))
            .then((x.from, x.to).cmp(&(y.from, y.to)))
    });
    pairs.truncate(n);
    let mut confusion = Confusion {
        queries: query_labels.len(),
        top1_hits: per_class.values().map(|c| c.1).sum(),
        confused_pairs,
        ranking: RANKING.into(),
        pairs,
        per_class: per_class
            .into_iter()
            .map(|(class, (queries, hits))| ClassRecall {
                class,
                name: name(class),
                queries,
                hits,
                recall_at_1: hits as f64 / queries as f64,
            })
            .collect(),
        all_counts,
    };
    for i in 0..confusion.pairs.len() {
        let (a, b) = (confusion.pairs[i].from, confusion.pairs[i].to);
        confusion.pairs[i].reverse_count = confusion.count(b, a);
    }
    Ok(confusion)
}

/// [`count_confusions`] of embeddings `emb` (in [`eval::evaluate`]'s order) under `protocol`.
pub fn confusions(
    protocol: &crate::data::EvalProtocol,
    emb: &[ndarray::Array2<f32>],
    names: &[String],
    n: usize,
) -> Result<Confusion, TrainError> {
    let (query, gallery) = protocol.sets();
    count_confusions(
        &query.labels,
        &gallery.labels,
        &eval::top1(protocol, emb),
        names,
        n,
    )
}

/// One class's R@1 under two models.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClassDiff {
    /// Evaluation label.
    pub class: usize,
    /// Class name.
    pub name: String,
    /// Queries of the class.
    pub queries: usize,
    /// R@1 under the first model.
    pub first: f64,
    /// R@1 under the second model.
    pub second: f64,
    /// `second − first`.
    pub diff: f64,
}

/// Per-class R@1 of two models side by side, the largest |difference| first (then by
/// label), so the classes where the models disagree open the table. Both must have been
/// evaluated on the same classes with the same query counts.
pub fn compare_classes(a: &Confusion, b: &Confusion) -> Result<Vec<ClassDiff>, TrainError> {
    let same = a.per_class.len() == b.per_class.len()
        && a.per_class
            .iter()
            .zip(&b.per_class)
            .all(|(x, y)| x.class == y.class && x.queries == y.queries);
    if !same {
        return Err(TrainError::Eval(
            "the two models were evaluated on different classes or queries".into(),
        ));
    }
    let mut rows: Vec<ClassDiff> = a
        .per_class
        .iter()
        .zip(&b.per_class)
        .map(|(x, y)| ClassDiff {
            class: x.class,
            name: x.name.clone(),
            queries: x.queries,
            first: x.recall_at_1,
            second: y.recall_at_1,
            diff: y.recall_at_1 - x.recall_at_1,
        })
        .collect();
    rows.sort_by(|x, y| {
        y.diff
            .abs()
            .total_cmp(&x.diff.abs())
            .then(x.class.cmp(&y.class))
    });
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{EvalProtocol, ImageSet};
    use ndarray::array;

    fn names(n: usize) -> Vec<String> {
        ["cat", "dog", "fox", "owl"][..n]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn set(labels: Vec<usize>) -> ImageSet {
        ImageSet {
            data: vec![0.0; labels.len()],
            labels,
            chw: [1, 1, 1],
        }
    }

    /// Leave-one-out on a line: cat at 0, 0.1; dog at 0.15, 1; fox at 5, 5.2.
    /// Nearest neighbours: cat0→cat1, cat1→dog0 (0.05 < 0.1), dog0→cat1, dog1→dog0,
    /// fox0→fox1, fox1→fox0. So cat→dog 1, dog→cat 1, four hits out of six.
    #[test]
    fn leave_one_out_counts_are_the_misses() {
        let p = EvalProtocol::LeaveOneOut(set(vec![0, 0, 1, 1, 2, 2]));
        let e = array![[0.0f32], [0.1], [0.15], [1.0], [5.0], [5.2]];
        let c = confusions(&p, std::slice::from_ref(&e), &names(3), 5).unwrap();
        assert_eq!((c.queries, c.top1_hits, c.confused_pairs), (6, 4, 2));
        let total: usize = c.pairs.iter().map(|p| p.count).sum();
        assert_eq!(total, c.queries - c.top1_hits);
        assert_eq!(
            eval::top1_hits(&p, &[e]).iter().filter(|&&h| h).count(),
            c.top1_hits
        );
        // Both counts are 1; cat1→dog0 has margin 0.01 − 0.0025, dog0→cat1 0.7225 − 0.0025:
        // the dog→cat miss is the more confident one and ranks first.
        let p0 = &c.pairs[0];
        assert_eq!((p0.from_name.as_str(), p0.to_name.as_str()), ("dog", "cat"));
        assert_eq!((p0.count, p0.from_queries, p0.reverse_count), (1, 2, 1));
        assert!((p0.rate - 0.5).abs() < 1e-12);
        assert!((p0.mean_margin - 0.72).abs() < 1e-5, "{}", p0.mean_margin);
        let ex = &p0.examples[0];
        assert_eq!((ex.query, ex.retrieved), (2, 1));
        assert!((ex.margin.unwrap() - 0.72).abs() < 1e-5);
        assert_eq!((c.pairs[1].from, c.pairs[1].to), (0, 1));
        let r1: Vec<f64> = c.per_class.iter().map(|r| r.recall_at_1).collect();
        assert_eq!(r1, vec![0.5, 0.5, 1.0]);
        assert_eq!(c.count(0, 1), 1);
        assert_eq!(c.count(0, 2), 0);
    }

    /// Query → gallery: three cat queries all retrieve the owl image; one dog query retrieves
    /// the fox. Count ranks cat→owl (3 of 3) above dog→fox (1 of 2).
    #[test]
    fn query_gallery_ranks_by_count_and_keeps_n() {
        let p = EvalProtocol::QueryGallery {
            query: set(vec![0, 0, 0, 1, 1]),
            gallery: set(vec![0, 1, 2, 3]),
        };
        let q = array![[2.9f32], [3.0], [3.1], [1.1], [2.05]];
        let g = array![[0.0f32], [1.0], [2.0], [3.0]];
        let c = confusions(&p, &[q, g], &names(4), 1).unwrap();
        assert_eq!((c.queries, c.top1_hits, c.confused_pairs), (5, 1, 2));
        assert_eq!(c.pairs.len(), 1);
        let top = &c.pairs[0];
        assert_eq!(
            (top.from, top.to, top.count, top.from_queries),
            (0, 3, 3, 3)
        );
        assert_eq!(top.examples.len(), EXAMPLES_PER_PAIR);
        // Largest margin first: the query at 3.1 is farthest from the cat image.
        assert_eq!(top.examples[0].query, 2);
        assert_eq!(c.count(1, 2), 1);
        assert_eq!(c.per_class[1].hits, 1);
    }

    #[test]
    fn zero_pairs_and_mismatched_input_are_errors() {
        let t = Top1 {
            retrieved: 0,
            distance: 0.0,
            same_class_distance: None,
        };
        let e = count_confusions(&[0], &[1], &[t], &[], 0).unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
        assert!(count_confusions(&[0, 1], &[1], &[t], &[], 3).is_err());
        let far = Top1 { retrieved: 9, ..t };
        assert!(count_confusions(&[0], &[1], &[far], &[], 3).is_err());
        // A class without a gallery image: the miss has no margin; names fall back to labels.
        let c = count_confusions(&[0], &[1], &[t], &[], 3).unwrap();
        assert_eq!(c.pairs[0].examples[0].margin, None);
        assert_eq!(c.pairs[0].from_name, "0");
    }

    #[test]
    fn comparison_sorts_by_difference_and_checks_classes() {
        let hits = |h: [usize; 3]| {
            let t: Vec<Top1> = (0..6)
                .map(|q| Top1 {
                    retrieved: if q % 2 < h[q / 2] {
                        q / 2
                    } else {
                        (q / 2 + 1) % 3
                    },
                    distance: 0.0,
                    same_class_distance: Some(0.0),
                })
                .collect();
            count_confusions(&[0, 0, 1, 1, 2, 2], &[0, 1, 2], &t, &names(3), 3).unwrap()
        };
        let (a, b) = (hits([2, 1, 0]), hits([2, 2, 2]));
        let rows = compare_classes(&a, &b).unwrap();
        let order: Vec<usize> = rows.iter().map(|r| r.class).collect();
        assert_eq!(order, vec![2, 1, 0]);
        assert_eq!(
            (rows[0].first, rows[0].second, rows[0].diff),
            (0.0, 1.0, 1.0)
        );
        assert!(compare_classes(&a, &a)
            .unwrap()
            .iter()
            .all(|r| r.diff == 0.0));
        let one = Top1 {
            retrieved: 0,
            distance: 0.0,
            same_class_distance: Some(0.0),
        };
        let other = count_confusions(&[0], &[0], &[one], &[], 1).unwrap();
        assert!(compare_classes(&a, &other).is_err());
    }
}
