//! The house stays in order: no import loop between the modules of any crate, at any depth,
//! and the binary stays thin.
//!
//! Every path a module's code names counts (`crate::`, `super::`, `self::`, a child's name,
//! `use` trees expanded; comments and test modules do not): in each module with submodules,
//! its children and its own file (`mod.rs`) are the nodes, and a use of something deep inside
//! a sibling is a use of that sibling. A loop among them fails, so shared types live in a
//! module both sides use rather than in one side or in the parent's file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::util::root;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A module's path inside its crate (`["index", "wal"]`); the crate root is empty.
type Module = Vec<String>;

fn module_of(rel: &Path) -> Module {
    let mut m: Module = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect();
    let last = m.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        m.push(stem.to_string());
    }
    m
}

/// The code of a file without its test module and comments (doc links are not imports).
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path the code names, `use` trees expanded: `use super::{a, b::c}` gives
/// `super::a` and `super::b::c`.
fn paths(code: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts =
            is_ident(chars[i]) && (i == 0 || !(is_ident(chars[i - 1]) || chars[i - 1] == ':'));
        if !starts {
            i += 1;
            continue;
        }
        i = tree(&chars, i, Vec::new(), &mut out);
    }
    out
}

/// Reads the path (tree) starting at `i` under `prefix`; returns where it ends.
fn tree(
    chars: &[char],
    mut i: usize,
    mut prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    loop {
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        if i == start {
            break;
        }
        prefix.push(chars[start..i].iter().collect());
        if chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
            i += 2;
            if chars.get(i) == Some(&'{') {
                i += 1;
                loop {
                    while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
                        i += 1;
                    }
                    match chars.get(i) {
                        Some('}') | None => return i + 1,
                        Some(c) if is_ident(*c) => i = tree(chars, i, prefix.clone(), out),
                        Some(_) => i += 1,
                    }
                }
            }
            continue;
        }
        break;
    }
    if prefix.len() > 1 {
        out.push(prefix);
    }
    i
}

/// The module a path in `from` points into: `crate::`, `super::` and `self::` resolved, and a
/// bare first segment taken as a child module of `from` when there is one.
fn resolve(from: &Module, path: &[String], modules: &BTreeSet<Module>) -> Option<Module> {
    let mut abs: Module;
    let mut rest = path;
    match path[0].as_str() {
        "crate" => {
            abs = Vec::new();
            rest = &path[1..];
        }
        "self" | "super" => {
            abs = from.clone();
            while let Some(seg) = rest.first() {
                match seg.as_str() {
                    "self" => {}
                    "super" => {
                        abs.pop()?;
                    }
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
        first => {
            let mut child = from.clone();
            child.push(first.to_string());
            if !modules.contains(&child) {
                return None;
            }
            abs = from.clone();
        }
    }
    for seg in rest {
        let mut next = abs.clone();
        next.push(seg.clone());
        if modules.contains(&next) {
            abs = next;
        } else {
            break;
        }
    }
    Some(abs)
}

/// Name of the parent's own file in a scope's graph (`mod.rs`, `lib.rs`).
const OWN: &str = "(mod.rs)";

/// For each module with submodules: its children (and its own file, [`OWN`]) and which of
/// them use which. A use of a module deep inside a sibling counts as a use of that sibling.
fn scopes(src: &Path) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mods: Vec<(Module, PathBuf)> = files
        .iter()
        .map(|f| (module_of(f.strip_prefix(src).unwrap()), f.clone()))
        .collect();
    let modules: BTreeSet<Module> = mods.iter().map(|(m, _)| m.clone()).collect();
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (from, file) in &mods {
        let text = code(&std::fs::read_to_string(file).unwrap());
        for p in paths(&text) {
            let Some(to) = resolve(from, &p, &modules) else {
                continue;
            };
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common == from.len() && common == to.len() {
                continue;
            }
            // The crate root is the crate's façade of re-exports, used from everywhere.
            if common == 0 && (from.is_empty() || to.is_empty()) {
                continue;
            }
            let node = |m: &Module| m.get(common).cloned().unwrap_or_else(|| OWN.to_string());
            out.entry(from[..common].join("::"))
                .or_default()
                .entry(node(from))
                .or_default()
                .insert(node(&to));
        }
    }
    out
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

/// Loops between a parent's own file and its children that predate this check (the state and
/// route list shared from `mod.rs`): named here so the check holds everywhere else. The test
/// fails when one of these is gone, so the list can only shrink.
const KNOWN_LOOPS: [(&str, &str); 3] = [
    ("retrieval/src", "server"),
    ("retrieval/src", "server::routes"),
    ("training/src", "data"),
];

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
    let mut loops = Vec::new();
    for krate in ["src", "ann/src", "retrieval/src", "training/src"] {
        let scopes = scopes(&root().join(krate));
        assert!(
            scopes.values().any(|e| !e.is_empty()),
            "{krate}: no edges found"
        );
        for (scope, e) in &scopes {
            let known = KNOWN_LOOPS.contains(&(krate, scope.as_str()));
            match cycle(e) {
                Some(c) if !known => loops.push(format!("{krate} [{scope}]: {}", c.join(" -> "))),
                None if known => loops.push(format!(
                    "{krate} [{scope}] has no loop any more: take it off KNOWN_LOOPS"
                )),
                _ => {}
            }
        }
    }
    assert!(loops.is_empty(), "import loops:\n{}", loops.join("\n"));
}

#[test]
fn the_detector_sees_super_self_and_child_paths() {
    let d = tempfile::tempdir().unwrap();
    let write = |p: &str, text: &str| {
        let p = d.path().join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("lib.rs", "pub mod a;\n");
    // The parent's file uses a child; the child uses the parent's file through `super::`.
    write(
        "a/mod.rs",
        "pub mod b;\npub mod c;\npub struct T;\npub use b::X;\n",
    );
    write("a/b.rs", "use super::{c::Y, T};\npub struct X;\n");
    // A sibling used through `self::super::` and a nested `use` tree.
    write(
        "a/c.rs",
        "// use super::b::X; (a comment names nothing)\npub struct Y;\n",
    );
    let s = scopes(d.path());
    let a = &s["a"];
    assert_eq!(a[OWN], BTreeSet::from(["b".to_string()]));
    assert_eq!(a["b"], BTreeSet::from([OWN.to_string(), "c".to_string()]));
    assert!(!a.contains_key("c"), "a comment is not a use: {a:?}");
    assert!(cycle(a).is_some(), "mod.rs <-> b is a loop");
    write("a/c.rs", "use self::super::b::X;\npub struct Y;\n");
    write("a/b.rs", "use super::c::Y;\npub struct X;\n");
    write("a/mod.rs", "pub mod b;\npub mod c;\n");
    let s = scopes(d.path());
    assert_eq!(
        cycle(&s["a"]),
        Some(vec!["b".to_string(), "c".to_string(), "b".to_string()]),
        "{s:?}"
    );
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
