//! The search page in a real headless Chromium: `tests/browser/page.test.mjs` (playwright-core
//! driving Debian's `chromium`) against a real `htg serve` over the photo fixtures and their
//! modified copies, with the bundled photo model: search, the distance slider, more like this
//! by click and by keyboard, the duplicates view and a phone's width. Ignored where node or
//! chromium is not installed. `HTG_SCREENSHOTS=docs` writes its three screenshots into docs/.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::http::Server;
use crate::util::{copy_files, fixture, htg_ok, root, s};

fn chromium() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("CHROMIUM").map(PathBuf::from),
        Some(PathBuf::from("/usr/bin/chromium")),
        Some(PathBuf::from("/usr/bin/chromium-browser")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

fn works(cmd: &str, dir: &Path) -> bool {
    Command::new(cmd)
        .arg("--version")
        .current_dir(dir)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
#[ignore = "needs Chromium, node and npm (apt-get install chromium npm)"]
fn the_page_searches_clicks_through_cuts_and_groups_duplicates_in_chromium() {
    let dir = root().join("tests/browser");
    let browser = chromium().expect("no chromium (apt-get install chromium)");
    assert!(
        works("node", &dir) && works("npm", &dir),
        "node or npm is not installed (apt-get install npm)"
    );
    if !dir.join("node_modules/playwright-core").is_dir() {
        let st = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm runs");
        assert!(st.success(), "npm ci in tests/browser failed");
    }
    let tmp = tempfile::TempDir::new().unwrap();
    let photos = tmp.path().join("photos");
    copy_files(&fixture("photos/gallery"), &photos);
    copy_files(&fixture("photos/queries"), &photos);
    let idx = tmp.path().join("idx");
    htg_ok(&["index", s(&photos), "--index", s(&idx), "--model", "photo"]);
    let srv = Server::start(&idx, &[]);
    let shots = match std::env::var_os("HTG_SCREENSHOTS") {
        Some(d) => root().join(d),
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-shots"),
    };
    std::fs::create_dir_all(&shots).unwrap();
    let names = [
        "web-page.png",
        "web-page-similar.png",
        "web-page-duplicates.png",
    ];
    for n in names {
        let _ = std::fs::remove_file(shots.join(n));
    }
    let out = Command::new("node")
        .arg("page.test.mjs")
        .current_dir(&dir)
        .env("HTG_URL", format!("http://{}", srv.addr))
        .env("HTG_IMAGE", photos.join("chelsea.jpg"))
        .env("HTG_BAD_IMAGE", fixture("bad/notanimage.jpg"))
        .env("HTG_SHOTS", &shots)
        .env("CHROMIUM", &browser)
        .output()
        .expect("node runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "page test failed:\n{text}");
    assert!(text.contains("browser: ok (6 thumbnails"), "{text}");
    for n in names {
        let img = image::open(shots.join(n)).expect("each screenshot is a PNG");
        assert_eq!(img.width(), 1100, "{n}: viewport width");
    }
    eprintln!("screenshots: {}", s(&shots));
}
