//! `htg eval --hard-pairs`: one or two models evaluated on the unseen classes, their hard
//! pairs ([`confusion`]), and a report a person can read: a self-contained HTML file
//! (thumbnails inlined as `data:` PNGs, no scripts, no external assets, so it can be mailed,
//! attached to an issue or opened offline) and a JSON twin for scripts.
//!
//! Thumbnails are the model's input tensors, de-normalised with its spec: what the model saw,
//! at its input size, rather than the source files (IDX and CSV sets have none).

use std::collections::HashMap;
use std::fmt::Write as _;

use base64::Engine as _;
use htg_retrieval::embed::Embedder;
use htg_retrieval::spec::{Color, Layout, ModelSpec};
use serde::{Deserialize, Serialize};

use crate::confusion::{self, ClassDiff, ConfusedPair, Confusion};
use crate::data::{DataSource, ImageSet, ZeroShotSplit};
use crate::eval::{self, EvalReport};
use crate::TrainError;

/// Images shown per class in a pair row (the outlined example first).
pub const THUMBS_PER_CLASS: usize = 3;

/// Displayed size of a thumbnail, CSS pixels (small inputs are scaled up, pixelated).
const THUMB_PX: u32 = 44;

/// One model's metrics and confusions.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelPairs {
    /// How the report names the model (its file name).
    pub model: String,
    /// The usual `htg eval` metrics, at the top level as in a plain `htg eval` JSON.
    #[serde(flatten)]
    pub eval: EvalReport,
    /// Hard pairs and per-class R@1.
    pub hard_pairs: Confusion,
}

/// What `htg eval --hard-pairs --json` writes: the first model's report (a superset of the
/// plain `htg eval` JSON), and with `--compare` the second model's and the per-class table.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HardPairsReport {
    /// The model given with `--model`.
    #[serde(flatten)]
    pub first: ModelPairs,
    /// The model given with `--compare`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<ModelPairs>,
    /// Per-class R@1 of both models, the largest |difference| first (with `--compare`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_r1: Vec<ClassDiff>,
}

/// A finished evaluation: the report, and the split and spec its thumbnails are drawn from.
pub struct HardPairsRun {
    /// The numbers.
    pub report: HardPairsReport,
    split: ZeroShotSplit,
    spec: ModelSpec,
}

/// Evaluates `first` (and `second`, when given) on the unseen classes of `data` and keeps
/// each model's `n` hardest pairs. Each model reads the data with its own spec; both must see
/// the same queries and gallery.
pub fn hard_pairs(
    first: (&str, &dyn Embedder),
    second: Option<(&str, &dyn Embedder)>,
    data: &str,
    ks: &[usize],
    seed: u64,
    n: usize,
) -> Result<HardPairsRun, TrainError> {
    if n == 0 {
        return Err(TrainError::Eval(
            "asked for 0 hard pairs; ask for at least 1".into(),
        ));
    }
    let source = DataSource::resolve(data)?;
    let split = source.load(first.1.spec(), None)?;
    let a = evaluate_model(first.0, first.1, &split, ks, seed, n)?;
    let (compare, class_r1) = match second {
        None => (None, Vec::new()),
        Some((label, model)) => {
            let other;
            let split_b = if model.spec() == first.1.spec() {
                &split
            } else {
                other = source.load(model.spec(), None)?;
                let (qa, ga) = split.eval.sets();
                let (qb, gb) = other.eval.sets();
                if qa.labels != qb.labels || ga.labels != gb.labels {
                    return Err(TrainError::Eval(
                        "the two models' specs load different evaluation images".into(),
                    ));
                }
                &other
            };
            let b = evaluate_model(label, model, split_b, ks, seed, n)?;
            let rows = confusion::compare_classes(&a.hard_pairs, &b.hard_pairs)?;
            (Some(b), rows)
        }
    };
    Ok(HardPairsRun {
        report: HardPairsReport {
            first: a,
            compare,
            class_r1,
        },
        spec: first.1.spec().clone(),
        split,
    })
}

fn evaluate_model(
    label: &str,
    model: &dyn Embedder,
    split: &ZeroShotSplit,
    ks: &[usize],
    seed: u64,
    n: usize,
) -> Result<ModelPairs, TrainError> {
    let mut emb = Vec::new();
    let report = eval::evaluate(&split.name, &split.eval, ks, seed, |sets| {
        let e: Vec<_> = sets
            .iter()
            .map(|s| eval::embed_with(model, s))
            .collect::<Result<_, _>>()?;
        emb = e.clone();
        Ok(e)
    })?;
    let hard_pairs = confusion::confusions(&split.eval, &emb, &split.eval_names, n)?;
    Ok(ModelPairs {
        model: label.to_string(),
        eval: report,
        hard_pairs,
    })
}

/// The image at `i` of `set` as a PNG `data:` URI: the tensor mapped back to 0..255 pixels
/// with `spec` (`value · std + mean`, divided by `scale`), in RGB.
pub fn thumbnail(set: &ImageSet, i: usize, spec: &ModelSpec) -> Result<String, TrainError> {
    let (h, w, c) = match spec.layout {
        Layout::Nchw => (set.chw[1], set.chw[2], set.chw[0]),
        Layout::Nhwc => (set.chw[0], set.chw[1], set.chw[2]),
    };
    let x = set.sample(i);
    let at = |ch: usize, y: usize, xx: usize| match spec.layout {
        Layout::Nchw => x[(ch * h + y) * w + xx],
        Layout::Nhwc => x[(y * w + xx) * c + ch],
    };
    let pick = |v: &[f32], ch: usize, d: f32| v.get(ch).or(v.first()).copied().unwrap_or(d);
    let scale = if spec.scale > 0.0 { spec.scale } else { 1.0 };
    let pixel = |ch: usize, y: usize, xx: usize| {
        let v = at(ch, y, xx) * pick(&spec.std, ch, 1.0) + pick(&spec.mean, ch, 0.0);
        (v / scale).round().clamp(0.0, 255.0) as u8
    };
    let mut rgb = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        for xx in 0..w {
            let px = match (spec.color, c) {
                (Color::Bgr, 3) => [pixel(2, y, xx), pixel(1, y, xx), pixel(0, y, xx)],
                (_, 3) => [pixel(0, y, xx), pixel(1, y, xx), pixel(2, y, xx)],
                _ => [pixel(0, y, xx); 3],
            };
            rgb.extend_from_slice(&px);
        }
    }
    let img = image::RgbImage::from_raw(w as u32, h as u32, rgb)
        .ok_or_else(|| TrainError::Eval("thumbnail size".into()))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| TrainError::Eval(format!("encoding a thumbnail: {e}")))?;
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    ))
}

/// Escapes text for HTML element content and quoted attributes.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A class name for a narrow cell: escaped, with line-break opportunities after `_`.
fn name_html(s: &str) -> String {
    esc(s).replace('_', "_<wbr>")
}

/// Which set an image is in, for thumbnails.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    Query,
    Gallery,
}

const STYLE: &str = "body{font:14px/1.35 system-ui,sans-serif;margin:16px;color:#222}\
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:18px 0 6px}\
.meta{color:#555;margin:2px 0}table{border-collapse:collapse}\
td,th{padding:3px 6px;border-bottom:1px solid #e4e4e4;text-align:left;vertical-align:middle}\
th{background:#f4f4f4}.num{text-align:right;white-space:nowrap}\
.cols{display:flex;gap:16px;align-items:flex-start}.cols>section{flex:1;min-width:0}\
.name{font-weight:600;max-width:150px;overflow-wrap:anywhere}\
img{image-rendering:pixelated;border:2px solid transparent;margin:1px;background:#fff}\
img.q{border-color:#e67e00}img.r{border-color:#d0021b}img.ok{border-color:#2a9d3f}\
.arrow{color:#999;font-size:18px}.small{color:#666;font-size:12px}\
.scroll{max-height:520px;overflow:auto;display:inline-block;border:1px solid #e4e4e4}\
.up{color:#1f7a32}.down{color:#c0392b}";

impl HardPairsRun {
    /// The self-contained HTML report (no scripts, no external references).
    pub fn html(&self) -> Result<String, TrainError> {
        let r = &self.report;
        let mut thumbs = Thumbs {
            run: self,
            cache: HashMap::new(),
        };
        let mut models = vec![&r.first];
        models.extend(&r.compare);
        let names: Vec<String> = models.iter().map(|m| m.model.clone()).collect();
        let mut o = String::new();
        let title = format!(
            "Hard pairs: {} on {}",
            names.join(" vs "),
            r.first.eval.data
        );
        let _ = write!(
            o,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>{t}</title><style>{STYLE}</style></head><body>\n<h1>{t}</h1>\n",
            t = esc(&title)
        );
        let (failed, own) = match &self.split.eval {
            crate::data::EvalProtocol::QueryGallery { .. } => (
                "a query of A that failed",
                ", <span style=\"color:#2a9d3f\">■</span> A's own gallery image it should \
                 have found",
            ),
            crate::data::EvalProtocol::LeaveOneOut(_) => ("an image of A that failed", ""),
        };
        let _ = writeln!(
            o,
            "<p class=\"meta\">{}. A pair A → B counts A's queries whose nearest neighbour \
             is a B image. Ranked by {}.</p>\n<p class=\"meta\">Outlined: \
             <span style=\"color:#e67e00\">■</span> {failed}, \
             <span style=\"color:#d0021b\">■</span> the B image it retrieved first{own}. \
             Thumbnails are the model's {}×{} input, de-normalised.</p>",
            esc(&r.first.eval.protocol),
            esc(confusion::RANKING),
            self.spec.width,
            self.spec.height
        );
        metrics_table(&mut o, &models);
        o.push_str("<div class=\"cols\">\n");
        for (i, m) in models.iter().enumerate() {
            let other = (models.len() == 2).then(|| models[1 - i]);
            let _ = writeln!(
                o,
                "<section><h2>{}: top {} of {} confused pairs</h2>\n<table class=\"pairs\">\
                 <tr><th>#</th><th>queries of A</th><th></th><th>retrieve B first</th>\
                 <th class=\"num\">A → B</th></tr>",
                esc(&m.model),
                m.hard_pairs.pairs.len(),
                m.hard_pairs.confused_pairs
            );
            for (rank, p) in m.hard_pairs.pairs.iter().enumerate() {
                pair_row(
                    &mut o,
                    rank + 1,
                    p,
                    other.map(|x| (&x.model, &x.hard_pairs)),
                    &mut thumbs,
                )?;
            }
            o.push_str("</table></section>\n");
        }
        o.push_str("</div>\n");
        class_table(&mut o, r);
        o.push_str("</body></html>\n");
        Ok(o)
    }
}

fn metrics_table(o: &mut String, models: &[&ModelPairs]) {
    o.push_str("<table class=\"metrics\"><tr><th>model</th>");
    for (k, _) in &models[0].eval.recall_at {
        let _ = write!(o, "<th class=\"num\">R@{k}</th>");
    }
    o.push_str(
        "<th class=\"num\">MAP@R</th><th class=\"num\">NMI</th><th class=\"num\">misses</th>\
         <th class=\"num\">confused pairs</th></tr>\n",
    );
    for m in models {
        let _ = write!(o, "<tr><td>{}</td>", esc(&m.model));
        for (_, r) in &m.eval.recall_at {
            let _ = write!(o, "<td class=\"num\">{r:.3}</td>");
        }
        let c = &m.hard_pairs;
        let _ = writeln!(
            o,
            "<td class=\"num\">{:.3}</td><td class=\"num\">{:.3}</td>\
             <td class=\"num\">{} / {}</td><td class=\"num\">{}</td></tr>",
            m.eval.map_at_r,
            m.eval.nmi,
            c.queries - c.top1_hits,
            c.queries,
            c.confused_pairs
        );
    }
    o.push_str("</table>\n");
}

fn pair_row(
    o: &mut String,
    rank: usize,
    p: &ConfusedPair,
    other: Option<(&String, &Confusion)>,
    thumbs: &mut Thumbs,
) -> Result<(), TrainError> {
    let ex = p.examples.first();
    let a = thumbs.class(p.from, ex.map(|m| (Side::Query, m.query)), true)?;
    let b = thumbs.class(p.to, ex.map(|m| (Side::Gallery, m.retrieved)), false)?;
    let _ = write!(
        o,
        "<tr class=\"pair\"><td>{rank}</td><td><div class=\"name\">{}</div>{a}</td>\
         <td class=\"arrow\">→</td><td><div class=\"name\">{}</div>{b}</td>\
         <td class=\"num\"><b>{}</b> / {} <span class=\"small\">({:.0}%)</span>\
         <div class=\"small\">B → A: {}</div><div class=\"small\">margin {:.3}</div>",
        name_html(&p.from_name),
        name_html(&p.to_name),
        p.count,
        p.from_queries,
        p.rate * 100.0,
        p.reverse_count,
        p.mean_margin
    );
    if let Some((name, c)) = other {
        let _ = write!(
            o,
            "<div class=\"small\">in {}: {}</div>",
            esc(name),
            c.count(p.from, p.to)
        );
    }
    o.push_str("</td></tr>\n");
    Ok(())
}

fn class_table(o: &mut String, r: &HardPairsReport) {
    match &r.compare {
        None => {
            let mut rows: Vec<_> = r.first.hard_pairs.per_class.iter().collect();
            rows.sort_by(|x, y| {
                x.recall_at_1
                    .total_cmp(&y.recall_at_1)
                    .then(x.class.cmp(&y.class))
            });
            let _ = writeln!(
                o,
                "<h2>Per-class R@1 ({} classes, worst first)</h2><div class=\"scroll\"><table>\
                 <tr><th>class</th><th class=\"num\">queries</th><th class=\"num\">hits</th>\
                 <th class=\"num\">R@1</th></tr>",
                rows.len()
            );
            for c in rows {
                let _ = writeln!(
                    o,
                    "<tr class=\"class\"><td>{}</td><td class=\"num\">{}</td>\
                     <td class=\"num\">{}</td><td class=\"num\">{:.3}</td></tr>",
                    esc(&c.name),
                    c.queries,
                    c.hits,
                    c.recall_at_1
                );
            }
        }
        Some(b) => {
            let better = r.class_r1.iter().filter(|c| c.diff > 0.0).count();
            let worse = r.class_r1.iter().filter(|c| c.diff < 0.0).count();
            let _ = writeln!(
                o,
                "<h2>Per-class R@1, largest difference first</h2><p class=\"meta\">{} is \
                 better on {better} classes, worse on {worse}, equal on {}.</p>\
                 <div class=\"scroll\"><table><tr><th>class</th><th class=\"num\">queries</th>\
                 <th class=\"num\">{}</th><th class=\"num\">{}</th><th class=\"num\">Δ</th></tr>",
                esc(&b.model),
                r.class_r1.len() - better - worse,
                esc(&r.first.model),
                esc(&b.model)
            );
            for c in &r.class_r1 {
                let cls = if c.diff > 0.0 {
                    "up"
                } else if c.diff < 0.0 {
                    "down"
                } else {
                    ""
                };
                let _ = writeln!(
                    o,
                    "<tr class=\"class\"><td>{}</td><td class=\"num\">{}</td>\
                     <td class=\"num\">{:.3}</td><td class=\"num\">{:.3}</td>\
                     <td class=\"num {cls}\">{:+.3}</td></tr>",
                    esc(&c.name),
                    c.queries,
                    c.first,
                    c.second,
                    c.diff
                );
            }
        }
    }
    o.push_str("</table></div>\n");
}

/// Thumbnails of the report, each image encoded once.
struct Thumbs<'a> {
    run: &'a HardPairsRun,
    cache: HashMap<(Side, usize), String>,
}

impl Thumbs<'_> {
    fn uri(&mut self, side: Side, i: usize) -> Result<String, TrainError> {
        if let Some(u) = self.cache.get(&(side, i)) {
            return Ok(u.clone());
        }
        let (q, g) = self.run.split.eval.sets();
        let set = if side == Side::Query { q } else { g };
        let u = thumbnail(set, i, &self.run.spec)?;
        self.cache.insert((side, i), u.clone());
        Ok(u)
    }

    /// Up to [`THUMBS_PER_CLASS`] `<img>`s of `class`: `lead` first and outlined (the failed
    /// query of A, or the B image it retrieved), then, for A, its gallery images (what the
    /// query should have found), then the class's other images.
    fn class(
        &mut self,
        class: usize,
        lead: Option<(Side, usize)>,
        is_a: bool,
    ) -> Result<String, TrainError> {
        let (q, g) = self.run.split.eval.sets();
        let same_set = std::ptr::eq(q, g);
        let of = |s: &ImageSet| -> Vec<usize> {
            (0..s.len()).filter(|&i| s.labels[i] == class).collect()
        };
        let mut picks: Vec<((Side, usize), &str)> = Vec::new();
        let push = |p: (Side, usize), css: &'static str, picks: &mut Vec<_>| {
            let p = if same_set { (Side::Query, p.1) } else { p };
            if picks.len() < THUMBS_PER_CLASS && !picks.iter().any(|(x, _)| *x == p) {
                picks.push((p, css));
            }
        };
        if let Some(l) = lead {
            push(l, if is_a { "q" } else { "r" }, &mut picks);
        }
        let (first, then) = if is_a && !same_set {
            ((Side::Gallery, "ok"), (Side::Query, ""))
        } else {
            ((Side::Gallery, ""), (Side::Query, ""))
        };
        for (side, css) in [first, then] {
            let set = if side == Side::Query { q } else { g };
            for i in of(set) {
                push((side, i), css, &mut picks);
            }
        }
        let mut out = String::new();
        for ((side, i), css) in picks {
            let what = match (side, same_set) {
                (_, true) => "image",
                (Side::Query, false) => "query",
                (Side::Gallery, false) => "gallery",
            };
            let _ = write!(
                out,
                "<img class=\"{css}\" src=\"{}\" width=\"{THUMB_PX}\" height=\"{THUMB_PX}\" \
                 alt=\"{what} {i}\" title=\"{what} {i}\">",
                self.uri(side, i)?
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use htg_retrieval::spec::Pooling;

    fn spec(layout: Layout, color: Color) -> ModelSpec {
        ModelSpec {
            input_name: "x".into(),
            output_name: "y".into(),
            layout,
            height: 2,
            width: 2,
            resize: Default::default(),
            color,
            scale: 1.0 / 255.0,
            mean: vec![0.5; color.channels()],
            std: vec![0.5; color.channels()],
            pooling: Pooling::None,
            embedding_dim: 4,
        }
    }

    fn decode(uri: &str) -> image::RgbImage {
        let b64 = uri
            .strip_prefix("data:image/png;base64,")
            .expect("a PNG data URI");
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        image::load_from_memory(&png).unwrap().to_rgb8()
    }

    /// Preprocessing then de-normalising gives the pixels back, in every layout and colour.
    #[test]
    fn thumbnails_undo_the_preprocessing() {
        let src = image::RgbImage::from_fn(2, 2, |x, y| {
            image::Rgb([(x * 200) as u8, (y * 100 + 20) as u8, 255])
        });
        let img = image::DynamicImage::ImageRgb8(src.clone());
        for (layout, color) in [
            (Layout::Nchw, Color::Rgb),
            (Layout::Nhwc, Color::Rgb),
            (Layout::Nchw, Color::Bgr),
            (Layout::Nhwc, Color::Grey),
        ] {
            let s = spec(layout, color);
            let set = ImageSet::from_images(&[img.clone(), img.clone()], vec![0, 1], &s).unwrap();
            let back = decode(&thumbnail(&set, 1, &s).unwrap());
            assert_eq!(back.dimensions(), (2, 2));
            for (a, b) in back.pixels().zip(src.pixels()) {
                if color == Color::Grey {
                    assert!(a[0] == a[1] && a[1] == a[2], "{layout:?} {color:?}");
                } else {
                    assert_eq!(a, b, "{layout:?} {color:?}");
                }
            }
        }
    }

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }
}
