//! The module graph: which top-level modules of the library import which (every `crate::x`
//! path in a module's code, comments and test modules left out) has no cycle, and every
//! import points down the list in docs/architecture.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level module a source file belongs to (`src/net/mlp.rs` -> `net`).
fn top_module(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A file's code without its comments and without its `#[cfg(test)]` module (the tests may
/// reach anywhere).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// module -> the modules it imports.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let from = top_module(&root, &f);
        if from == "lib" || from == "main" {
            continue;
        }
        let text = code(&std::fs::read_to_string(&f).unwrap());
        let entry = edges.entry(from.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let to: String = text[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !to.is_empty() && to != from {
                entry.insert(to);
            }
        }
    }
    edges
}

#[test]
fn the_module_graph_has_no_cycle() {
    let edges = graph();
    // Depth-first search; a module met again while still on the stack closes a cycle.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, bool>,
        stack: &mut Vec<String>,
    ) {
        state.insert(m.to_string(), false);
        stack.push(m.to_string());
        for to in edges.get(m).into_iter().flatten() {
            match state.get(to) {
                Some(false) => {
                    let start = stack.iter().position(|s| s == to).unwrap();
                    panic!("import cycle: {} -> {to}", stack[start..].join(" -> "));
                }
                Some(true) => {}
                None => visit(to, edges, state, stack),
            }
        }
        stack.pop();
        state.insert(m.to_string(), true);
    }
    let mut state = BTreeMap::new();
    for m in edges.keys() {
        if !state.contains_key(m) {
            visit(m, &edges, &mut state, &mut Vec::new());
        }
    }
}

/// The modules in the order docs/architecture.md lists them: the first word of each line of
/// its first text block that starts at the first column (`net/` -> `net`).
fn documented_order() -> Vec<String> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md"))
            .unwrap();
    let block = doc.split("```text\n").nth(1).unwrap();
    let block = block.split("```").next().unwrap();
    block
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.is_empty())
        .map(|l| {
            let word = l.split_whitespace().next().unwrap();
            word.trim_end_matches('/')
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect()
}

#[test]
fn imports_point_down_the_documented_list() {
    let order = documented_order();
    let at = |m: &str| {
        order.iter().position(|o| o == m).unwrap_or_else(|| {
            panic!("docs/architecture.md does not list module '{m}' (listed: {order:?})")
        })
    };
    for (from, tos) in graph() {
        for to in tos {
            assert!(
                at(&to) > at(&from),
                "{from} imports {to}, which docs/architecture.md lists above it"
            );
        }
    }
}
