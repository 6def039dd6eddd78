//! Every supported encoding of one emoji decodes and embeds close to its PNG source.

use htg_retrieval::preprocess::load_image;
use htg_retrieval::{Embedder, TractEmbedder};

use crate::util::{fixture, tiny_model};

#[test]
fn all_formats_embed_like_the_source() {
    let e = TractEmbedder::load(&tiny_model()).unwrap();
    let src = e
        .embed_images(&[load_image(&fixture("images/1f600-google.png")).unwrap()])
        .unwrap();
    // Lossless encodings must match closely; lossy ones (JPEG, palette, binary GIF alpha,
    // grey) only roughly. The distance of an unrelated emoji shows the scale.
    let other = e
        .embed_images(&[load_image(&fixture("images/1f999-google.png")).unwrap()])
        .unwrap();
    let unrelated = (&src - &other).mapv(|x| x * x).sum();
    for (name, max) in [
        ("rgb.bmp", 1e-6),
        ("rgba16.png", 1e-6),
        ("rgba-lossless.webp", 1e-6),
        ("rgb.jpg", 0.5),
        ("palette-trns.png", 0.5),
        ("palette.gif", 1.0),
        ("grey.png", 1.0),
    ] {
        let img = load_image(&fixture(&format!("images/formats/{name}")))
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        let v = e.embed_images(&[img]).unwrap();
        let d = (&src - &v).mapv(|x| x * x).sum();
        assert!(
            d <= unrelated * max as f32 + 1e-6,
            "{name}: d={d} unrelated={unrelated}"
        );
    }
}
