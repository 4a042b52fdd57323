//! The Python package's functions, from the command line's definitions: which commands it
//! exposes, which of their flags each function takes (in its signature's order), and from the
//! flags' clap definitions their types, defaults and help. The package builds its signatures
//! and keyword documentation from [`parameters`], and the committed `.pyi` stub is
//! [`stub`]'s output (a test fails when they differ).

use std::any::TypeId;
use std::path::PathBuf;

use clap::ArgAction;

use super::keywords::{keyword, subcommand, Value};

/// One function of the Python package.
pub struct Function {
    /// The function's and the command's name.
    pub name: &'static str,
    /// The flags it takes as keyword arguments, in its signature's order (their clap ids).
    pub flags: &'static [&'static str],
    /// Of those, the ones Python requires (no default there, an optional flag on the command
    /// line that the command checks).
    pub required: &'static [&'static str],
    /// Arguments of the Python function alone (what it returns instead of files), after the
    /// flags: name, stub type, default as Python writes it.
    pub python_only: &'static [(&'static str, &'static str, &'static str)],
    /// The stub's return type.
    pub returns: &'static str,
}

/// The network flags of the analysis commands, in the package's order.
macro_rules! net_flags {
    ($($more:literal),*) => {
        &[
            "net", "units", "width", "input_dim", "image_size", "classes", "batch", "placement",
            "shortcut", "projection", "norm", "init", "bn_mode", "seed", "weights", "data",
            "model", "input_shape", $($more),*
        ]
    };
}

/// Every function of the package, in `__all__`'s order.
pub const FUNCTIONS: &[Function] = &[
    Function {
        name: "profile",
        flags: net_flags!("precision"),
        required: &[],
        python_only: &[("arrays", "bool", "False")],
        returns: "pd.DataFrame",
    },
    Function {
        name: "check",
        flags: net_flags!("directions"),
        required: &[],
        python_only: &[],
        returns: "pd.DataFrame",
    },
    Function {
        name: "train",
        flags: &[
            "net",
            "data",
            "train_subset",
            "test_subset",
            "downsample",
            "placement",
            "shortcut",
            "projection",
            "norm",
            "init",
            "units",
            "width",
            "epochs",
            "batch",
            "lr",
            "momentum",
            "optimizer",
            "warmup_steps",
            "recipe",
            "weight_decay",
            "weight_decay_mode",
            "record_every",
            "checkpoint",
            "resume",
            "stop_after_epochs",
            "seed",
            "unfused",
            "precision",
        ],
        required: &[],
        python_only: &[],
        returns: "Tuple[pd.DataFrame, pd.DataFrame]",
    },
    Function {
        name: "paths",
        flags: net_flags!("sample", "window"),
        required: &[],
        python_only: &[],
        returns: "pd.DataFrame",
    },
    Function {
        name: "lesion",
        flags: &[
            "weights",
            "net",
            "units",
            "width",
            "input_dim",
            "image_size",
            "classes",
            "batch",
            "placement",
            "shortcut",
            "projection",
            "norm",
            "init",
            "bn_mode",
            "seed",
            "data",
            "model",
            "draws",
            "precision",
        ],
        required: &[],
        python_only: &[],
        returns: "pd.DataFrame",
    },
    Function {
        name: "shatter",
        flags: &[
            "depths",
            "width",
            "replicates",
            "seed",
            "placement",
            "precision",
        ],
        required: &[],
        python_only: &[],
        returns: "Tuple[pd.DataFrame, pd.DataFrame]",
    },
    Function {
        name: "run",
        flags: &["spec", "out", "plots"],
        required: &[],
        python_only: &[],
        returns: "pd.DataFrame",
    },
];

/// The functions written in Python alone (no command of their own; `resprop/__init__.py`
/// imports them), after the commands' in `__all__`: name and stub declaration.
pub const PYTHON_FUNCTIONS: &[(&str, &str)] = &[(
    "export_onnx",
    "def export_onnx(module: Any, example_input: Any, path: _P) -> _P: ...\n",
)];

/// One keyword argument of a Python function.
#[derive(Debug, Clone)]
pub struct Parameter {
    pub name: String,
    /// The default (`None` for a required argument).
    pub default: Option<Value>,
    /// The stub's type.
    pub stub_type: String,
    /// The flag's help, one paragraph.
    pub help: String,
}

const PATH: &str = "Union[str, PathLike[str]]";

/// The function named `name`.
pub fn function(name: &str) -> Option<&'static Function> {
    FUNCTIONS.iter().find(|f| f.name == name)
}

/// The keyword arguments of the function `name` (its flags', from their clap definitions,
/// then the Python-only ones).
pub fn parameters(name: &str) -> Vec<Parameter> {
    let f = function(name).unwrap_or_else(|| panic!("no Python function '{name}'"));
    let command = subcommand(name).unwrap_or_else(|| panic!("no command '{name}'"));
    let mut out: Vec<Parameter> = f
        .flags
        .iter()
        .map(|id| {
            let arg = command
                .get_arguments()
                .find(|a| keyword(a) == *id)
                .unwrap_or_else(|| panic!("`resprop {name}` has no flag '{id}'"));
            let required = f.required.contains(id) || arg.is_required_set();
            parameter(arg, required)
        })
        .collect();
    out.extend(f.python_only.iter().map(|(n, ty, d)| Parameter {
        name: n.to_string(),
        default: Some(match *d {
            "False" => Value::Bool(false),
            "True" => Value::Bool(true),
            other => Value::Str(other.to_string()),
        }),
        stub_type: ty.to_string(),
        help: String::new(),
    }));
    out
}

/// What a flag is as a keyword argument.
fn parameter(arg: &clap::Arg, required: bool) -> Parameter {
    let parser = arg.get_value_parser().type_id();
    let switch = matches!(arg.get_action(), ArgAction::SetTrue);
    let list = arg.get_value_delimiter().is_some();
    let (scalar, read): (&str, fn(&str) -> Value) = if switch {
        ("bool", |s| Value::Bool(s == "true"))
    } else if [
        TypeId::of::<usize>(),
        TypeId::of::<u64>(),
        TypeId::of::<u32>(),
    ]
    .iter()
    .any(|t| parser == *t)
    {
        ("int", |s| {
            Value::Int(s.parse().expect("an integer default"))
        })
    } else if parser == TypeId::of::<f64>() {
        ("float", |s| {
            Value::Float(s.parse().expect("a float default"))
        })
    } else if parser == TypeId::of::<PathBuf>() {
        (PATH, |s| Value::Str(s.to_string()))
    } else {
        ("str", |s| Value::Str(s.to_string()))
    };
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    let (stub_type, default) = match (required, list, defaults.as_slice()) {
        (true, _, _) => (scalar.to_string(), None),
        (false, true, d) if !d.is_empty() => (
            format!("Sequence[{scalar}]"),
            Some(Value::List(
                d.iter().flat_map(|v| v.split(',')).map(read).collect(),
            )),
        ),
        (false, false, [d]) => (scalar.to_string(), Some(read(d))),
        (false, _, _) if switch => ("bool".into(), Some(Value::Bool(false))),
        (false, _, _) => (format!("Optional[{scalar}]"), Some(Value::None)),
    };
    let help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    Parameter {
        name: keyword(arg).to_string(),
        default,
        stub_type,
        help: help.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// A default as Python writes it.
fn python_literal(v: &Value) -> String {
    match v {
        Value::None => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => format!("{f:?}"),
        Value::Str(s) => format!("{s:?}"),
        Value::List(items) => format!(
            "({})",
            items
                .iter()
                .map(python_literal)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// One parameter line of the stub.
fn stub_line(p: &Parameter) -> String {
    match &p.default {
        None => format!("    {}: {},\n", p.name, p.stub_type),
        Some(d) => format!("    {}: {} = {},\n", p.name, p.stub_type, python_literal(d)),
    }
}

/// The package's `.pyi` stub (`python/resprop/__init__.pyi`).
pub fn stub() -> String {
    let mut out = String::from(
        r#"# Generated from the command line's definitions (src/cli/python.rs): do not edit.
# `UPDATE_STUB=1 cargo test --release --lib python_stub` writes it again.
from os import PathLike
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, TypeVar, Union, overload

import numpy as np
import pandas as pd

Arrays = Dict[str, List[np.ndarray]]
_P = TypeVar("_P", bound=Union[str, PathLike[str]])

"#,
    );
    for f in FUNCTIONS {
        let params = parameters(f.name);
        if f.name == "profile" {
            // Two overloads: the table alone, or with the arrays.
            let (flags, arrays) = params.split_at(params.len() - 1);
            debug_assert_eq!(arrays[0].name, "arrays");
            out.push_str("@overload\ndef profile(\n");
            flags.iter().for_each(|p| out.push_str(&stub_line(p)));
            out.push_str("    arrays: Literal[False] = False,\n) -> pd.DataFrame: ...\n");
            out.push_str("@overload\ndef profile(\n");
            flags.iter().for_each(|p| out.push_str(&stub_line(p)));
            out.push_str(
                "    *,\n    arrays: Literal[True],\n) -> Tuple[pd.DataFrame, Arrays]: ...\n",
            );
            continue;
        }
        out.push_str(&format!("def {}(\n", f.name));
        params.iter().for_each(|p| out.push_str(&stub_line(p)));
        out.push_str(&format!(") -> {}: ...\n", f.returns));
    }
    for (_, declaration) in PYTHON_FUNCTIONS {
        out.push_str(declaration);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed stub is the generated one (`UPDATE_STUB=1` writes it).
    #[test]
    fn python_stub_is_generated() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/resprop/__init__.pyi");
        let generated = stub();
        if std::env::var_os("UPDATE_STUB").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap();
        assert!(
            committed == generated,
            "python/resprop/__init__.pyi differs from the flags' definitions: run `UPDATE_STUB=1 cargo test --release --lib python_stub` and commit it"
        );
    }

    #[test]
    fn parameters_follow_the_flags() {
        let p = parameters("profile");
        let units = p.iter().find(|p| p.name == "units").unwrap();
        assert_eq!(
            (units.stub_type.as_str(), units.default.clone()),
            ("int", Some(Value::Int(54)))
        );
        let weights = parameters("lesion").into_iter().next().unwrap();
        // Optional in Python as on the command line: lesion takes weights or model.
        assert_eq!(
            (weights.name.as_str(), weights.default),
            ("weights", Some(Value::None))
        );
        let depths = &parameters("shatter")[0];
        assert_eq!(depths.stub_type, "Sequence[int]");
        assert_eq!(
            python_literal(depths.default.as_ref().unwrap()),
            "(1, 10, 24, 50)"
        );
        let train = parameters("train");
        let net = train.iter().find(|p| p.name == "net").unwrap();
        assert_eq!(net.default, Some(Value::Str("resnet:2:basic".into())));
        let wd = train.iter().find(|p| p.name == "weight_decay").unwrap();
        assert_eq!(python_literal(wd.default.as_ref().unwrap()), "0.0001");
        for f in FUNCTIONS {
            assert!(
                parameters(f.name)
                    .iter()
                    .all(|p| p.name == "arrays" || !p.help.is_empty() || p.name == "spec"),
                "{}: a flag without help",
                f.name
            );
        }
    }
}
