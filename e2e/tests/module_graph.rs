//! The server's and the operator's modules stay by concern (see the module maps in their
//! src/lib.rs):
//!
//! - a pure module imports only pure modules, and does no I/O itself;
//! - in every folder of src/ (src/ itself included), the entries (files and
//!   subfolders) import each other without a circle.
//!
//! Imports are read from the source: every `crate::…` and `super::…` path outside
//! comments and the `#[cfg(test)] mod tests` block, resolved to the deepest module it
//! names (`crate::drain::plan::describe` is `drain::plan`). A folder's `mod.rs` (`lib.rs`
//! for src/) declares and wires its entries, and they may use what it defines, so it is
//! left out of its own folder's graph; from outside the folder, using it is using the
//! folder. What this does not see: a `mod.rs` using its own entries by relative path,
//! and paths hidden behind a re-export.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A crate whose modules are checked: its folder and its pure modules (each with
/// everything under it: no API server, no Redis, no HTTP, no clock, no task). The rest
/// do I/O.
struct Crate {
    dir: &'static str,
    pure: &'static [&'static str],
}

const SERVER: Crate = Crate {
    dir: "server",
    pure: &[
        "admission",
        "auth::keys",
        "backplane::redis::keys",
        "client_addr",
        "history",
        "history_budget",
        "protocol",
        "ratelimit",
        "rooms",
    ],
};

const OPERATOR: Crate = Crate {
    dir: "operator",
    pure: OPERATOR_PURE,
};

const OPERATOR_PURE: &[&str] = &[
    "autoscaling::decision",
    "autoscaling::promql",
    "build",
    "crd",
    "drain::plan",
    "ownership",
    "reconcile::conditions",
    "reconcile::events",
    "reconcile::validate",
    "urls",
];

/// Code that means I/O (or the clock), which a pure module must not contain.
const IO_MARKERS: &[&str] = &[
    "async ",
    ".await",
    "kube::Client",
    "kube::Api",
    "Api<",
    "Api::",
    "tokio",
    "hyper",
    "std::fs",
    // Sockets; address types (`std::net::IpAddr`) are data.
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "::now()",
];

/// Module path ("" for the crate root, "reconcile::status", ...) → its code without
/// comments and without its test module.
fn modules(krate: &Crate) -> BTreeMap<String, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate.dir)
        .join("src");
    let mut out = BTreeMap::new();
    read_dir(&src, &src, &mut out);
    out
}

fn read_dir(src: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let relative = path.strip_prefix(src).unwrap().to_str().unwrap().to_owned();
        // The binaries are not part of the library's module tree.
        if relative == "main.rs" || relative == "bin" {
            continue;
        }
        if path.is_dir() {
            read_dir(src, &path, out);
        } else if let Some(stem) = relative.strip_suffix(".rs") {
            let mut segments: Vec<&str> = stem.split('/').collect();
            if matches!(segments.last(), Some(&"mod") | Some(&"lib")) {
                segments.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            out.insert(segments.join("::"), code(&text));
        }
    }
}

/// `text` without comments and without the `#[cfg(test)] mod tests` block (which
/// clippy keeps last in the file).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| {
            // A comment starts at `//`, unless it is a URL's `://`.
            let mut from = 0;
            while let Some(i) = line[from..].find("//") {
                let at = from + i;
                if !line[..at].ends_with(':') {
                    return &line[..at];
                }
                from = at + 2;
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The parent of module `m` ("" for a top-level module).
fn parent(m: &str) -> &str {
    m.rfind("::").map_or("", |i| &m[..i])
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_owned()
    } else {
        format!("{a}::{b}")
    }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Reads a path or `use` tree at `s[*i..]` (after `crate::` or `super::`): segments
/// separated by `::`, possibly ending in `*` or a `{…}` group. Pushes every full path it
/// names, each as its segments after `prefix`.
fn read_tree(s: &[u8], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut segments = prefix;
    loop {
        let start = *i;
        while *i < s.len() && is_ident(s[*i]) {
            *i += 1;
        }
        if *i > start {
            segments.push(String::from_utf8_lossy(&s[start..*i]).into_owned());
        } else if s.get(*i) == Some(&b'{') {
            *i += 1;
            loop {
                while s
                    .get(*i)
                    .is_some_and(|b| b.is_ascii_whitespace() || *b == b',')
                {
                    *i += 1;
                }
                match s.get(*i) {
                    None => return,
                    Some(b'}') => {
                        *i += 1;
                        return;
                    }
                    _ => read_tree(s, i, segments.clone(), out),
                }
                // Skip what follows the path in the group, such as `as name`.
                while s.get(*i).is_some_and(|b| *b != b',' && *b != b'}') {
                    *i += 1;
                }
            }
        }
        if s[*i..].starts_with(b"::") {
            *i += 2;
        } else {
            break;
        }
    }
    out.push(segments);
}

/// The modules module `m` (whose code is `code`) imports, among `all`.
fn imports(m: &str, code: &str, all: &BTreeSet<String>) -> BTreeSet<String> {
    let s = code.as_bytes();
    let mut found = BTreeSet::new();
    for (keyword, base) in [("crate::", ""), ("super::", parent(m))] {
        let mut from = 0;
        while let Some(i) = code[from..].find(keyword) {
            let at = from + i;
            from = at + keyword.len();
            if at > 0 && is_ident(s[at - 1]) {
                continue;
            }
            let mut paths = Vec::new();
            let mut i = from;
            read_tree(s, &mut i, Vec::new(), &mut paths);
            for segments in paths {
                let mut module = base.to_owned();
                for segment in segments {
                    match segment.as_str() {
                        "self" => {}
                        "super" => module = parent(&module).to_owned(),
                        _ => {
                            let deeper = join(&module, &segment);
                            if !all.contains(&deeper) {
                                break;
                            }
                            module = deeper;
                        }
                    }
                }
                if module != m {
                    found.insert(module);
                }
            }
        }
    }
    found
}

/// Every module → the modules it imports.
fn graph(krate: &Crate) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(krate);
    let all: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(m, code)| (m.clone(), imports(m, code, &all)))
        .collect()
}

fn is_pure(krate: &Crate, m: &str) -> bool {
    krate
        .pure
        .iter()
        .any(|p| m == *p || m.starts_with(&format!("{p}::")))
}

/// The entry of folder `folder` that module `m` is in: `folder`'s child module on the
/// way to `m`. `None` if `m` is not under `folder` or is `folder` itself (its face).
fn entry_of(folder: &str, m: &str) -> Option<String> {
    let rest = if folder.is_empty() {
        m
    } else {
        m.strip_prefix(folder)?.strip_prefix("::")?
    };
    let first = rest.split("::").next().filter(|s| !s.is_empty())?;
    Some(join(folder, first))
}

/// A circle in `edges`, as the path around it, if there is one.
fn find_circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut circle = path[start..].to_vec();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, edges, done, path) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut done, &mut Vec::new()))
}

#[test]
fn pure_modules_import_only_pure_modules() {
    for krate in [&SERVER, &OPERATOR] {
        pure_imports_only_pure(krate);
    }
}

fn pure_imports_only_pure(krate: &Crate) {
    let graph = graph(krate);
    for p in krate.pure {
        assert!(
            graph.contains_key(*p),
            "{}: the pure list names {p}, which is not a module",
            krate.dir
        );
    }
    let mut wrong = Vec::new();
    for (m, imported) in graph.iter().filter(|(m, _)| is_pure(krate, m)) {
        for i in imported.iter().filter(|i| !is_pure(krate, i)) {
            wrong.push(format!(
                "{m} imports {}",
                if i.is_empty() { "the crate root" } else { i }
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{}: pure modules importing I/O modules: {wrong:#?}",
        krate.dir
    );
}

#[test]
fn pure_modules_do_no_io() {
    let mut wrong = Vec::new();
    for krate in [&SERVER, &OPERATOR] {
        for (m, code) in modules(krate).iter().filter(|(m, _)| is_pure(krate, m)) {
            for marker in IO_MARKERS.iter().filter(|marker| code.contains(**marker)) {
                wrong.push(format!("{}: {m} contains {marker:?}", krate.dir));
            }
        }
    }
    assert!(wrong.is_empty(), "I/O in pure modules: {wrong:#?}");
}

#[test]
fn no_folder_has_an_import_circle() {
    for krate in [&SERVER, &OPERATOR] {
        no_circle_in(krate);
    }
}

fn no_circle_in(krate: &Crate) {
    let graph = graph(krate);
    let folders: BTreeSet<&str> = graph.keys().map(|m| parent(m)).collect();
    for folder in folders {
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (m, imported) in &graph {
            let Some(from) = entry_of(folder, m) else {
                continue;
            };
            let targets = imported.iter().filter_map(|i| entry_of(folder, i));
            edges
                .entry(from.clone())
                .or_default()
                .extend(targets.filter(|to| *to != from));
        }
        if let Some(circle) = find_circle(&edges) {
            let name = if folder.is_empty() { "src/" } else { folder };
            panic!(
                "import circle in {}/{name}: {}",
                krate.dir,
                circle.join(" → ")
            );
        }
    }
}

/// The reader finds what it should, so the tests above cannot pass on an empty graph.
#[test]
fn the_graph_sees_imports_of_every_kind() {
    let operator = graph(&OPERATOR);
    let imports = |m: &str, i: &str| operator[m].contains(i);
    // `use super::sibling::{A, B}`
    assert!(imports("reconcile::status", "reconcile::apply"));
    // `use crate::a::b::{self, C}` across folders
    assert!(imports("autoscaling::sources::prometheus", "urls"));
    // a path in code: `crate::build::redis_name(...)`
    assert!(imports("reconcile::apply", "build"));
    // `use super::*` from a folder's file to the folder's face
    assert!(imports("build::chat", "build"));
    // a path in an attribute: `Rule::new(crate::urls::CEL_HTTP_BASE_URL)`
    assert!(imports("crd", "urls"));
    // and the circle finder finds a circle
    let edges = BTreeMap::from([
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["c".to_owned()])),
        ("c".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]);
    assert_eq!(
        find_circle(&edges),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    // The server: a top-level `use crate::x::Y` and a folder's file to its face.
    let server = graph(&SERVER);
    assert!(server["session"].contains("admission"));
    assert!(server["backplane::redis"].contains("history"));
}
