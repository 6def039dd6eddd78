//! `htg index` and `htg search` end to end on the committed emoji fixtures.

use tempfile::TempDir;

use crate::util::{copy_files, fixture, htg_ok, parse_results, s, tiny_model};

#[test]
fn index_then_search_finds_the_query_first_and_reindex_embeds_nothing() {
    let tmp = TempDir::new().unwrap();
    let images = tmp.path().join("images");
    copy_files(&fixture("images"), &images);
    let idx = tmp.path().join("idx");
    let model = tiny_model();
    let out = htg_ok(&[
        "index",
        s(&images),
        "--index",
        s(&idx),
        "--model",
        s(&model),
    ]);
    assert!(out.contains("embedded 24 new"), "{out}");

    let query = images.join("1f999-google.png");
    let json = htg_ok(&["search", "--index", s(&idx), s(&query), "-k", "5", "--json"]);
    let hits = parse_results(&json);
    assert_eq!(hits.len(), 5);
    assert!(hits[0].0.ends_with("1f999-google.png"), "{json}");
    assert!(hits[0].1 < 1e-6, "{json}");
    assert!(
        hits.windows(2).all(|w| w[0].1 <= w[1].1),
        "nearest first: {json}"
    );

    let exact = htg_ok(&[
        "search",
        "--index",
        s(&idx),
        s(&query),
        "-k",
        "5",
        "--json",
        "--exact",
    ]);
    assert_eq!(parse_results(&exact)[0].2, hits[0].2);

    // Unchanged folder: nothing embedded.
    let again = htg_ok(&["index", s(&images), "--index", s(&idx)]);
    assert!(again.contains("embedded 0 new"), "{again}");
    assert!(again.contains("unchanged 24"), "{again}");

    // Change one file, copy another, delete a third.
    std::fs::copy(
        images.join("26fa-google.png"),
        images.join("1f600-google.png"),
    )
    .unwrap();
    std::fs::copy(images.join("1f53c-google.png"), images.join("copy.png")).unwrap();
    std::fs::remove_file(images.join("1f49c-twitter.png")).unwrap();
    let third = htg_ok(&["index", s(&images), "--index", s(&idx)]);
    // 1f600-google now has 26fa's bytes and copy.png has 1f53c's: both reuse stored vectors.
    assert!(third.contains("embedded 0 new"), "{third}");
    assert!(third.contains("reused 2"), "{third}");
    assert!(third.contains("removed 2"), "{third}");
    assert!(third.contains("index holds 24 images"), "{third}");

    let text = htg_ok(&["search", "--index", s(&idx), s(&query), "-k", "3"]);
    assert!(text.lines().count() == 4, "{text}");
}

#[test]
fn index_reloads_in_a_new_process_and_text_output_ranks() {
    let tmp = TempDir::new().unwrap();
    let idx = tmp.path().join("idx");
    htg_ok(&[
        "index",
        s(&fixture("images")),
        "--index",
        s(&idx),
        "--model",
        s(&tiny_model()),
        "--batch-size",
        "5",
    ]);
    // The formats/ folder adds 7 encodings of 1f600-google.
    let json = htg_ok(&[
        "search",
        "--index",
        s(&idx),
        s(&fixture("images/formats/rgb.bmp")),
        "-k",
        "31",
        "--json",
    ]);
    let hits = parse_results(&json);
    assert_eq!(hits.len(), 31);
    // rgb.bmp is pixel-identical to the PNG source: both at distance ~0.
    let near: Vec<_> = hits
        .iter()
        .filter(|h| h.1 < 1e-6)
        .map(|h| h.0.clone())
        .collect();
    assert!(
        near.iter().any(|p| p.ends_with("formats/rgb.bmp")),
        "{near:?}"
    );
    assert!(
        near.iter().any(|p| p.ends_with("/1f600-google.png")),
        "{near:?}"
    );
}

#[test]
fn search_max_distance_drops_farther_hits_and_refuses_a_bad_bound() {
    use crate::util::{htg, stderr};
    let tmp = TempDir::new().unwrap();
    let images = tmp.path().join("images");
    copy_files(&fixture("images"), &images);
    let idx = tmp.path().join("idx");
    htg_ok(&[
        "index",
        s(&images),
        "--index",
        s(&idx),
        "--model",
        s(&tiny_model()),
    ]);
    let query = images.join("1f999-google.png");
    let all = parse_results(&htg_ok(&[
        "search",
        "--index",
        s(&idx),
        s(&query),
        "-k",
        "8",
        "--json",
        "--exact",
    ]));
    assert_eq!(all.len(), 8);
    // A bound between the 3rd and 4th distances keeps exactly the first three.
    assert!(all[2].1 < all[3].1, "distinct distances: {all:?}");
    let bound = (all[2].1 + all[3].1) / 2.0;
    let bound = bound.to_string();
    let cut = parse_results(&htg_ok(&[
        "search",
        "--index",
        s(&idx),
        s(&query),
        "-k",
        "8",
        "--json",
        "--exact",
        "--max-distance",
        &bound,
    ]));
    let ids: Vec<u64> = cut.iter().map(|h| h.2).collect();
    let want: Vec<u64> = all[..3].iter().map(|h| h.2).collect();
    assert_eq!(ids, want, "{cut:?} vs {all:?}");

    // Below the nearest other image and the query itself at ~0: one row; HNSW agrees.
    let nearest = parse_results(&htg_ok(&[
        "search",
        "--index",
        s(&idx),
        s(&query),
        "--json",
        "--max-distance",
        &(all[1].1 / 2.0).to_string(),
    ]));
    assert_eq!(nearest.len(), 1, "{nearest:?}");
    assert_eq!(nearest[0].2, all[0].2);

    // A query nothing is that close to (a photo among emoji): an empty list, not an error.
    let photo = fixture("photos/gallery/chelsea.jpg");
    let none = htg_ok(&[
        "search",
        "--index",
        s(&idx),
        s(&photo),
        "--json",
        "--max-distance",
        "0",
    ]);
    let none: serde_json::Value = serde_json::from_str(&none).unwrap();
    assert_eq!(none, serde_json::json!({ "results": [] }));

    for bad in ["-1", "NaN", "inf", "4.5", "near"] {
        let out = htg(&[
            "search",
            "--index",
            s(&idx),
            s(&query),
            &format!("--max-distance={bad}"),
        ]);
        assert!(!out.status.success(), "--max-distance {bad} accepted");
        let err = stderr(&out);
        assert!(err.contains("max-distance"), "{bad}: {err}");
    }
}
