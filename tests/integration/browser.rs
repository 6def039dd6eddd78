//! The search page in a real headless Chromium: `tests/browser/page.test.mjs` (playwright-core
//! driving Debian's `chromium`) against a real `htg serve`. Skips, saying why, only when node
//! or chromium is not installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::http::{indexed_fixtures, Server};
use crate::util::{fixture, root, s};

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
fn the_page_shows_thumbnails_of_the_nearest_images_in_chromium() {
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
    let (_tmp, images, idx) = indexed_fixtures();
    let srv = Server::start(&idx, &[]);
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = Command::new("node")
        .arg("page.test.mjs")
        .current_dir(&dir)
        .env("HTG_URL", format!("http://{}", srv.addr))
        .env("HTG_IMAGE", images.join("1f999-google.png"))
        .env("HTG_BAD_IMAGE", fixture("bad/notanimage.jpg"))
        .env("HTG_SCREENSHOT", &shot)
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
    let img = image::open(&shot).expect("the screenshot is a PNG");
    assert_eq!(img.width(), 1100, "viewport width");
    eprintln!("screenshot: {}", s(&shot));
}
