//! The zero-shot split of numerically labelled sets: the first half of the classes trains,
//! the second half is evaluated.

use image::DynamicImage;

use super::{Encoder, EvalProtocol, ImageSet, ZeroShotSplit};
use crate::TrainError;

/// Splits labelled images whose labels are `0..classes` into train (`< classes/2`) and eval;
/// `class_name` names an original label for reports.
pub(super) fn numeric_split(
    train_imgs: Vec<DynamicImage>,
    train_labels: Vec<usize>,
    eval_imgs: Vec<DynamicImage>,
    eval_labels: Vec<usize>,
    spec: Encoder<'_>,
    max_classes: Option<usize>,
    class_name: &dyn Fn(usize) -> String,
) -> Result<ZeroShotSplit, TrainError> {
    let classes = train_labels
        .iter()
        .chain(&eval_labels)
        .max()
        .map_or(0, |m| m + 1);
    let classes = max_classes.map_or(classes, |m| m.min(classes));
    if classes < 4 {
        return Err(TrainError::Data(format!(
            "{classes} classes; the zero-shot split needs at least 4 (half train, half unseen)"
        )));
    }
    let half = classes / 2;
    let pick = |imgs: Vec<DynamicImage>, labels: Vec<usize>, lo: usize, hi: usize| {
        let (i, l): (Vec<_>, Vec<_>) = imgs
            .into_iter()
            .zip(labels)
            .filter(|(_, l)| (lo..hi).contains(l))
            .map(|(i, l)| (i, l - lo))
            .unzip();
        (i, l)
    };
    let (ti, tl) = pick(train_imgs, train_labels, 0, half);
    let (ei, el) = pick(eval_imgs, eval_labels, half, classes);
    check_classes(&tl, half, "training")?;
    check_classes(&el, classes - half, "evaluation")?;
    Ok(ZeroShotSplit {
        name: String::new(),
        train: ImageSet::encode(&ti, tl, spec)?,
        train_classes: half,
        eval: EvalProtocol::LeaveOneOut(ImageSet::encode(&ei, el, spec)?),
        eval_names: (half..classes).map(class_name).collect(),
        train_vendor: None,
        val: None,
        skipped: Vec::new(),
    })
}

pub(super) fn check_classes(
    labels: &[usize],
    classes: usize,
    what: &str,
) -> Result<(), TrainError> {
    let mut count = vec![0usize; classes];
    for &l in labels {
        count[l] += 1;
    }
    if let Some(c) = count.iter().position(|&c| c < 2) {
        return Err(TrainError::Data(format!(
            "{what} class {c} has {} image(s); every class needs at least 2",
            count[c]
        )));
    }
    Ok(())
}
