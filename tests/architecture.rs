//! The shape of the house, checked: reads every `crate::` path in `src/` (use lines and inline
//! paths, `$crate::` in macros and `super::` too) and fails on
//! - an import cycle between rooms (the top-level modules of the library),
//! - an edge that points up the documented order (a room may use only rooms listed before it),
//! - an import cycle between the files of one room (a room's `mod.rs` is its facade: its
//!   children may use it, so edges into it are left out).
//!
//! The binary (`main.rs`, `cli.rs`, `commands.rs`) uses the library through `agop::` and is not
//! part of the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The rooms in dependency order: each may use only rooms before it. Same list as lib.rs.
const ORDER: &[&str] = &[
    "error",
    "util",
    "math",
    "model",
    "fetch",
    "tokenize",
    "train",
    "measure",
    "correlate",
    "features",
    "report",
    "pipeline",
];

/// Files of the binary crate.
const BIN: &[&str] = &["main.rs", "cli.rs", "commands.rs"];

/// Macros exported at the crate root and the room that defines them.
const ROOT_MACROS: &[(&str, &str)] = &[("bad", "error"), ("bail_bad", "error")];

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a source file: `src/measure/gop.rs` → ["measure", "gop"],
/// `src/model/ops/mod.rs` → ["model", "ops"], `src/lib.rs` → [].
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// Code without comments (so that doc text naming a path is not an import).
fn strip_comments(text: &str) -> String {
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// Every path the code names after `crate::` or `super::` (groups expanded), resolved to an
/// absolute module path (a list of segments; the last may be an item rather than a module).
fn referenced_paths(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let (base, skip): (Vec<String>, usize) = if rest.starts_with("crate::")
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        {
            (vec![], 7)
        } else if rest.starts_with("super::")
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':'))
        {
            // The parent module (for `mod.rs`, the parent of its folder's module). In a file's
            // inline `mod tests`, `super` is the file itself; the parent is then a facade or
            // the room, which the graph leaves out anyway.
            let mut p = here.to_vec();
            p.pop();
            (p, 7)
        } else {
            i += rest.chars().next().unwrap().len_utf8();
            continue;
        };
        i += skip;
        for tail in expand(&code[i..]) {
            let mut p = base.clone();
            p.extend(tail.into_iter().filter(|s| s != "self"));
            out.push(p);
        }
    }
    out
}

/// The paths of one `a::b::{c, d::e}` tail (only what is needed: segments up to the second
/// level and groups at the first or second level).
fn expand(s: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| -> (String, usize) {
        let n = s.char_indices().find(|(_, c)| !(c.is_alphanumeric() || *c == '_')).map(|(i, _)| i).unwrap_or(s.len());
        (s[..n].to_string(), n)
    };
    let mut segs = Vec::new();
    let mut pos = 0;
    loop {
        let r = &s[pos..];
        if let Some(inner) = r.strip_prefix('{') {
            // A group: split on top-level commas.
            let mut depth = 0;
            let mut end = inner.len();
            for (k, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        end = k;
                        break;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            let body = &inner[..end];
            let mut items = Vec::new();
            let (mut d, mut start) = (0, 0);
            for (k, c) in body.char_indices() {
                match c {
                    '{' => d += 1,
                    '}' => d -= 1,
                    ',' if d == 0 => {
                        items.push(&body[start..k]);
                        start = k + 1;
                    }
                    _ => {}
                }
            }
            items.push(&body[start..]);
            let mut out = Vec::new();
            for it in items {
                let it = it.trim();
                if it.is_empty() {
                    continue;
                }
                for t in expand(it) {
                    let mut p = segs.clone();
                    p.extend(t);
                    out.push(p);
                }
            }
            return out;
        }
        let (id, n) = ident(r);
        if id.is_empty() {
            break;
        }
        segs.push(id);
        pos += n;
        if s[pos..].starts_with("::") {
            pos += 2;
        } else {
            break;
        }
    }
    vec![segs]
}

/// The graph of rooms and, per room, of files, from the sources under `src`.
struct Graph {
    rooms: BTreeMap<String, BTreeSet<String>>,
    /// file module path ("measure::gop") → file module paths it uses in the same room.
    files: BTreeMap<String, BTreeSet<String>>,
}

fn build(src: &Path) -> Graph {
    let mut files = Vec::new();
    rs_files(src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_path(src, f)).collect();
    let mut g = Graph { rooms: BTreeMap::new(), files: BTreeMap::new() };
    for f in &files {
        let rel = f.strip_prefix(src).unwrap().to_string_lossy().into_owned();
        if BIN.contains(&rel.as_str()) {
            continue;
        }
        let here = module_path(src, f);
        let Some(room) = here.first().cloned() else { continue }; // lib.rs
        let code = strip_comments(&std::fs::read_to_string(f).unwrap()).replace("$crate::", "crate::");
        for path in referenced_paths(&code, &here) {
            let target_room = match path.first() {
                Some(r) => {
                    ROOT_MACROS.iter().find(|(m, _)| m == r).map(|(_, room)| room.to_string()).unwrap_or(r.clone())
                }
                None => continue,
            };
            if target_room != room {
                g.rooms.entry(room.clone()).or_default().insert(target_room);
                continue;
            }
            // Same room: the longest prefix of the path that is a file's module.
            let target = (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains(p));
            if let Some(t) = target {
                let is_facade =
                    t.len() == 1 || files.iter().any(|ff| module_path(src, ff) == t && ff.ends_with("mod.rs"));
                if t != here && !is_facade {
                    g.files.entry(here.join("::")).or_default().insert(t.join("::"));
                }
            }
        }
    }
    g
}

/// A cycle in a directed graph, if any (as the list of nodes around it).
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|x| x == m).unwrap();
                    let mut c = stack[start..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn rooms_and_files_have_no_import_cycles_and_point_one_way() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = build(&src);
    for (room, uses) in &g.rooms {
        eprintln!("{room:>10} → {}", uses.iter().cloned().collect::<Vec<_>>().join(", "));
    }
    if let Some(c) = find_cycle(&g.rooms) {
        panic!("import cycle between rooms: {}", c.join(" → "));
    }
    let rank = |r: &str| ORDER.iter().position(|x| *x == r).unwrap_or_else(|| panic!("room {r} is not in ORDER"));
    for (room, uses) in &g.rooms {
        for u in uses {
            assert!(rank(u) < rank(room), "{room} uses {u}, which comes after it in the documented order {ORDER:?}");
        }
    }
    if let Some(c) = find_cycle(&g.files) {
        panic!("import cycle between files: {}", c.join(" → "));
    }
    // The graph is not empty: the parser finds the edges it should.
    assert!(g.rooms["measure"].contains("model") && g.rooms["pipeline"].contains("measure"));
    assert!(g.files["measure::run"].contains("measure::gop"));
}

#[test]
fn the_checker_finds_cycles_and_reads_groups() {
    // A cycle a → b → c → a in a synthetic graph, and none once one edge goes.
    let mut e: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        e.entry(a.into()).or_default().insert(b.into());
    }
    let c = find_cycle(&e).expect("cycle");
    assert_eq!(c.first(), c.last());
    e.get_mut("c").unwrap().remove("a");
    assert!(find_cycle(&e).is_none());
    // Groups, nested groups, `self`, super and inline paths.
    let here = vec!["measure".to_string(), "run".to_string()];
    let code = "use crate::{bad, model::{self, Gpt2}, util::write_atomic};\nlet x = super::gop::Gop::load(p);\n\
                crate::fetch::resolve_model(a)";
    let paths = referenced_paths(code, &here);
    let rooms: BTreeSet<&str> = paths.iter().filter_map(|p| p.first().map(String::as_str)).collect();
    assert_eq!(rooms, ["bad", "fetch", "measure", "model", "util"].into_iter().collect());
    assert!(paths.contains(&vec!["measure".to_string(), "gop".to_string(), "Gop".to_string(), "load".to_string()]));
}
