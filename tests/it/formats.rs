//! `docs/formats.md` describes the files resprop writes, completely: every array key of real
//! state files (`profile --npz`, over every placement x norm x init x shortcut family of MLPs
//! and ResNets) and checkpoints (SGD and Adam) matches a row of its tables, and every op, shortcut
//! kind and `spec` field of `meta_json` and every field of `config_json` is named in it.
//!
//! The tables' first cells are patterns: `<l>`, `<i>`, `<j>` stand for a number, `<norm>` for
//! `bn` or `ln`, `{a,b}` for either, and `<name>` for any row of the names table.

use std::path::Path;

use crate::common::*;
use resprop::layers::NormKind;
use resprop::unit::spec::shortcut_examples;
use resprop::unit::Placement;

const DOC: &str = include_str!("../../docs/formats.md");

/// The text of `## {heading}...` up to the next `## ` heading.
fn section(heading: &str) -> &'static str {
    let start = DOC
        .find(&format!("\n## {heading}"))
        .unwrap_or_else(|| panic!("no section '{heading}' in docs/formats.md"));
    let rest = &DOC[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
    &rest[..end]
}

/// The backticked patterns in the first cell of every table row of `text`.
fn patterns(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| {
            let cell = l[1..].split('|').next().unwrap();
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Tok {
    Lit(String),
    Number,
    Either(Vec<String>),
    Name,
}

fn tokens(pattern: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        let close = match c {
            '<' => '>',
            '{' => '}',
            _ => {
                lit.push(c);
                continue;
            }
        };
        if !lit.is_empty() {
            out.push(Tok::Lit(std::mem::take(&mut lit)));
        }
        let inner: String = chars.by_ref().take_while(|&x| x != close).collect();
        out.push(match (c, inner.as_str()) {
            ('<', "l" | "i" | "j") => Tok::Number,
            ('<', "norm") => Tok::Either(vec!["bn".into(), "ln".into()]),
            ('<', "name") => Tok::Name,
            ('{', alts) => Tok::Either(alts.split(',').map(String::from).collect()),
            _ => panic!("unknown placeholder in pattern '{pattern}'"),
        });
    }
    if !lit.is_empty() {
        out.push(Tok::Lit(lit));
    }
    out
}

fn matches(toks: &[Tok], s: &str, names: &[Vec<Tok>]) -> bool {
    let Some((first, rest)) = toks.split_first() else {
        return s.is_empty();
    };
    match first {
        Tok::Lit(l) => s
            .strip_prefix(l.as_str())
            .is_some_and(|r| matches(rest, r, names)),
        Tok::Number => {
            let digits = s.chars().take_while(char::is_ascii_digit).count();
            (1..=digits).any(|n| matches(rest, &s[n..], names))
        }
        Tok::Either(alts) => alts.iter().any(|a| {
            s.strip_prefix(a.as_str())
                .is_some_and(|r| matches(rest, r, names))
        }),
        Tok::Name => (1..=s.len()).any(|k| {
            s.is_char_boundary(k)
                && names.iter().any(|n| matches(n, &s[..k], &[]))
                && matches(rest, &s[k..], names)
        }),
    }
}

/// The keys of an `.npz` (without `.npy`).
fn keys(path: &Path) -> Vec<String> {
    let mut r = ndarray_npy::NpzReader::new(std::fs::File::open(path).unwrap()).unwrap();
    r.names()
        .unwrap()
        .into_iter()
        .map(|n| n.trim_end_matches(".npy").to_string())
        .collect()
}

fn json_of(path: &Path, key: &str) -> serde_json::Value {
    let mut r = ndarray_npy::NpzReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let bytes: ndarray::Array1<u8> = r.by_name(key).unwrap();
    serde_json::from_slice(bytes.as_slice().unwrap()).unwrap()
}

fn ops_of(v: &serde_json::Value, out: &mut Vec<String>) {
    if let Some(a) = v.as_array() {
        for op in a {
            out.push(op["op"].as_str().unwrap().to_string());
        }
    }
}

/// Every key of `files` matched by a pattern of `key_patterns` (with `<name>` from
/// `name_patterns`); the unmatched ones.
fn undescribed(
    files: &[std::path::PathBuf],
    key_patterns: &[String],
    name_patterns: &[String],
) -> Vec<String> {
    let names: Vec<Vec<Tok>> = name_patterns.iter().map(|p| tokens(p)).collect();
    let keys_toks: Vec<Vec<Tok>> = key_patterns.iter().map(|p| tokens(p)).collect();
    let mut missing: Vec<String> = files
        .iter()
        .flat_map(|f| keys(f))
        .filter(|k| !keys_toks.iter().any(|t| matches(t, k, &names)))
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

#[test]
fn the_pattern_matcher_tells_described_from_undescribed() {
    let names = vec![
        tokens("unit<l>.branch.<norm><i>.{gamma,beta}"),
        tokens("stem.w"),
    ];
    let key = tokens("param/<name>");
    assert!(matches(&key, "param/unit12.branch.ln2.gamma", &names));
    assert!(matches(&key, "param/stem.w", &names));
    assert!(!matches(&key, "param/unit12.branch.gn2.gamma", &names));
    assert!(!matches(&key, "param/unit12.branch.w2", &names));
    assert!(!matches(&key, "param/stem.w.extra", &names));
    assert!(!matches(&key, "grad/stem.w", &names));
}

#[test]
fn docs_formats_describes_every_array_of_real_files() {
    let w = Work::new();
    let mut files = Vec::new();
    let mut write = |args: &[&str]| {
        let path = w.path(format!("s{}.npz", files.len()));
        Argv::new("profile --batch 4")
            .with(args)
            .path("--npz", &path)
            .ok();
        files.push(path);
    };
    let nets: [&[&str]; 3] = [
        &[
            "--net",
            "mlp",
            "--units",
            "2",
            "--width",
            "4",
            "--input-dim",
            "4",
        ],
        &["--net", "resnet:1:basic", "--image-size", "8"],
        &["--net", "resnet:1:bottleneck", "--image-size", "8"],
    ];
    let placements = [
        "original",
        "bn-after-add",
        "relu-before-add",
        "relu-preact",
        "full-preact",
        "post-norm",
        "pre-norm",
    ];
    for net in nets {
        for placement in placements {
            for norm in ["batch", "layer", "none"] {
                write(&[net, &["--placement", placement, "--norm", norm]].concat());
            }
        }
        // Every other kind of the one list (identity: above; deepnorm: below).
        for (shortcut, _) in shortcut_examples(Placement::FullPreact, NormKind::Batch)
            .filter(|(s, _)| *s != "identity")
        {
            write(&[net, &["--placement", "full-preact", "--shortcut", shortcut]].concat());
        }
        write(
            &[
                net,
                &[
                    "--placement",
                    "post-norm",
                    "--norm",
                    "layer",
                    "--shortcut",
                    "deepnorm",
                ],
            ]
            .concat(),
        );
        write(&[net, &["--init", "xavier"]].concat());
        write(&[net, &["--norm", "none", "--init", "fixup"]].concat());
        if net[1] != "mlp" {
            for projection in ["bn", "plain", "pad"] {
                write(&[net, &["--projection", projection]].concat());
            }
        }
    }
    let state = section("State file");
    let (keys_part, names_part) = state
        .split_once("### Parameter and buffer names")
        .expect("the names subsection");
    let names_part = names_part.split("\n### ").next().unwrap();
    let key_patterns = patterns(keys_part);
    let name_patterns = patterns(names_part);
    assert!(key_patterns.len() >= 10 && name_patterns.len() >= 15);
    let missing = undescribed(&files, &key_patterns, &name_patterns);
    assert!(
        missing.is_empty(),
        "keys docs/formats.md does not describe: {missing:?}"
    );

    // meta_json: every op, shortcut kind and spec field is named.
    let (mut ops, mut kinds, mut fields) = (Vec::new(), Vec::new(), Vec::new());
    for f in &files {
        let meta = json_of(f, "meta_json");
        ops_of(&meta["stem"], &mut ops);
        ops_of(&meta["head"], &mut ops);
        for u in meta["units"].as_array().unwrap() {
            for part in ["pre", "branch", "after_add"] {
                ops_of(&u[part], &mut ops);
            }
            ops_of(&u["shortcut"]["ops"], &mut ops);
            kinds.push(u["shortcut"]["kind"].as_str().unwrap().to_string());
        }
        fields.extend(meta["spec"].as_object().unwrap().keys().cloned());
    }
    for op in ops {
        assert!(
            state.contains(&format!("{{\"op\": \"{op}\"")),
            "op '{op}' is not described"
        );
    }
    for kind in kinds {
        assert!(
            state.contains(&format!("| `{kind}` |")),
            "shortcut kind '{kind}' is not described"
        );
    }
    for field in fields {
        assert!(
            state.contains(&format!("\"{field}\"")),
            "spec field '{field}' is not described"
        );
    }

    // Checkpoints, SGD and Adam.
    let mut checkpoints = Vec::new();
    for (i, extra) in [
        &["--net", "mlp", "--units", "2", "--width", "4"][..],
        &[
            "--net",
            "resnet:1:basic",
            "--optimizer",
            "adam",
            "--lr",
            "1e-3",
        ][..],
    ]
    .into_iter()
    .enumerate()
    {
        let ck = w.path(format!("ck{i}"));
        Argv::new("train --epochs 1 --batch 64")
            .path("--checkpoint", &ck)
            .with(extra)
            .ok();
        checkpoints.push(ck.join("checkpoint.npz"));
    }
    let ck_section = section("Checkpoints");
    let missing = undescribed(&checkpoints, &patterns(ck_section), &name_patterns);
    assert!(
        missing.is_empty(),
        "checkpoint keys not described: {missing:?}"
    );
    for f in &checkpoints {
        for field in json_of(f, "config_json").as_object().unwrap().keys() {
            assert!(
                ck_section.contains(&format!("`{field}`")),
                "config_json field '{field}' is not described"
            );
        }
    }
}
