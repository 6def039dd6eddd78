//! The house stays in order: no import cycle between the top-level modules of any crate
//! (edges are `crate::<module>` paths outside test modules), and the binary stays thin.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::util::root;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Module → modules it names through `crate::`.
fn edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut e: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        let mut rest = text;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + 7..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() && name != top {
                e.entry(top.clone()).or_default().insert(name);
            }
        }
    }
    e
}

fn cycle(e: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        u: &str,
        e: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(u.to_string(), 1);
        path.push(u.to_string());
        for v in e.get(u).into_iter().flatten() {
            match state.get(v.as_str()) {
                Some(1) => {
                    let mut c = path.clone();
                    c.push(v.clone());
                    return Some(c);
                }
                None => {
                    if let Some(c) = visit(v, e, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(u.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for u in e.keys() {
        if !state.contains_key(u) {
            if let Some(c) = visit(u, e, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn lines(dir: &Path) -> usize {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap().lines().count())
        .sum()
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    for krate in ["src", "ann/src", "retrieval/src", "training/src"] {
        let e = edges(&root().join(krate));
        assert!(!e.is_empty() || krate == "src", "{krate}: no edges found");
        assert_eq!(cycle(&e), None, "{krate}: import cycle");
    }
    // The detector finds a cycle when there is one.
    let mut fake = BTreeMap::new();
    fake.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    fake.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert!(cycle(&fake).is_some());
}

#[test]
fn the_binary_is_a_thin_layer() {
    let r = root();
    let src = lines(&r.join("src"));
    let total: usize = ["src", "ann", "retrieval", "training", "tests", "benches"]
        .iter()
        .map(|d| lines(&r.join(d)))
        .sum();
    let share = src as f64 / total as f64;
    eprintln!("src/: {src} of {total} Rust lines ({:.1}%)", share * 100.0);
    assert!(
        share <= 0.15,
        "src/ holds {:.1}% of the code",
        share * 100.0
    );
}
