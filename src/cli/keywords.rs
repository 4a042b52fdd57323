//! Named values (Python's keyword arguments; later, a request's JSON fields) parsed as the
//! command line: each becomes its flag, and the command line's own parser checks and converts
//! them, so that a flag's type, default, range and message are declared once, in the clap
//! definitions, for every front end.

use std::ffi::OsString;

use clap::ArgAction;

use super::{Cli, Command, Given};

/// A value given by name: what a Python keyword argument holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
}

impl Value {
    /// The value as the command line writes it (a list comma-separated).
    fn as_arg(&self) -> String {
        match self {
            Value::None => String::new(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            // `{:?}` keeps the value exact (0.1, 1e-300) and writes inf and NaN as the parser
            // reads them.
            Value::Float(f) => format!("{f:?}"),
            Value::Str(s) => s.clone(),
            Value::List(v) => v.iter().map(Value::as_arg).collect::<Vec<_>>().join(","),
        }
    }
}

/// The subcommand `name` of the command line's definition.
pub fn subcommand(name: &str) -> Option<clap::Command> {
    super::command()
        .get_subcommands()
        .find(|c| c.get_name() == name)
        .cloned()
}

/// The keyword name of a flag (its clap id: `bn_mode` for `--bn-mode`).
pub fn keyword(arg: &clap::Arg) -> &str {
    arg.get_id().as_str()
}

/// The command line `values` stand for: `--flag value` for each (a positional argument's
/// value alone, a `true` switch as its flag, `None` and `false` left out). An unknown name is
/// refused, naming it.
pub fn argv(command: &clap::Command, values: &[(String, Value)]) -> Result<Vec<OsString>, String> {
    let mut flags = Vec::new();
    let mut positionals = Vec::new();
    for (name, value) in values {
        let Some(arg) = command.get_arguments().find(|a| keyword(a) == name) else {
            return Err(format!(
                "{name}: no such argument of {}",
                command.get_name()
            ));
        };
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        match (value, switch) {
            (Value::None, _) | (Value::Bool(false), true) => {}
            (Value::Bool(true), true) => {
                flags.push(format!("--{}", arg.get_long().unwrap_or(name)).into())
            }
            (_, true) => return Err(format!("{name}: expected True or False")),
            (v, false) => match arg.get_long() {
                // `--flag=value`, so that a value starting with '-' stays a value.
                Some(long) => flags.push(format!("--{long}={}", v.as_arg()).into()),
                None => positionals.push(v.as_arg().into()),
            },
        }
    }
    let mut argv: Vec<OsString> = vec!["resprop".into(), command.get_name().into()];
    argv.extend(flags);
    if !positionals.is_empty() {
        argv.push("--".into());
        argv.extend(positionals);
    }
    Ok(argv)
}

/// Parses `values` as the arguments of the subcommand `name`, with the command line's parser
/// and checks. The flags named count as given (as on a command line). A bad value is one line
/// naming its keyword: `units: invalid value 'x': invalid digit found in string`.
pub fn parse(name: &str, values: &[(String, Value)]) -> Result<Command, String> {
    use clap::FromArgMatches;
    let command = subcommand(name).ok_or_else(|| format!("no command '{name}'"))?;
    let argv = argv(&command, values)?;
    let matches = super::command()
        .try_get_matches_from(&argv)
        .map_err(|e| message(&e, &command))?;
    let mut cli = Cli::from_arg_matches(&matches).map_err(|e| message(&e, &command))?;
    let mut parsed = cli.command.take().ok_or("no command")?;
    if let Some((_, sub)) = matches.subcommand() {
        parsed.set_given(&Given::of(sub));
    }
    Ok(parsed)
}

/// clap's error in one line, each flag named by its keyword (`--bn-mode <BN_MODE>` as
/// `bn_mode`).
fn message(e: &clap::Error, command: &clap::Command) -> String {
    use clap::error::{ContextKind, ContextValue};
    let rendered = e.render().to_string();
    let mut line = super::one_line_message(&rendered);
    // The argument the error is about, as clap names it in the message.
    if let Some(ContextValue::String(shown)) = e.get(ContextKind::InvalidArg) {
        // `--units <UNITS>`: the flag is the first word.
        let flag = shown.split_whitespace().next().unwrap_or_default();
        let id = command
            .get_arguments()
            .find(|a| a.get_long().is_some_and(|l| flag == format!("--{l}")))
            .map(|a| keyword(a).to_string());
        if let Some(id) = id {
            line = line
                .replace(&format!("'{shown}'"), &id)
                .replace(shown.as_str(), &id);
            // "invalid value 'x' for units: ..." as "units: invalid value 'x': ...".
            let body = line.strip_prefix("error: ").unwrap_or(&line);
            let moved = body.replacen(&format!(" for {id}:"), ":", 1);
            if moved != body {
                line = format!("{id}: {moved}");
            }
        }
    }
    let line = line.strip_prefix("error: ").unwrap_or(&line).to_string();
    keywords_for_flags(&line, command)
}

/// `text` with every `--flag` of `command` written as its keyword (`--record-every` as
/// `record_every`), for messages a front end without flags shows.
pub fn keywords_for_flags(text: &str, command: &clap::Command) -> String {
    let mut out = text.to_string();
    let mut longs: Vec<(&str, &str)> = command
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| (l, keyword(a))))
        .collect();
    // Longest first, so that `--weight-decay-mode` is not read as `--weight-decay` + `-mode`.
    longs.sort_by_key(|(l, _)| std::cmp::Reverse(l.len()));
    for (long, id) in longs {
        out = out.replace(&format!("--{long}"), id);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(v: &[(&str, Value)]) -> Vec<(String, Value)> {
        v.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn keywords_parse_as_the_command_line() {
        let Command::Profile(a) = parse(
            "profile",
            &values(&[
                ("units", Value::Int(7)),
                ("shortcut", Value::Str("scale:0.5".into())),
                ("low_memory", Value::Bool(true)),
                ("weights", Value::None),
            ]),
        )
        .unwrap() else {
            panic!("not a profile")
        };
        assert_eq!(a.job.net.arch.units, 7);
        assert_eq!(a.job.net.arch.shortcut.to_string(), "scale:0.5");
        assert!(a.job.low_memory);
        // Given, as on a command line; the rest at the command line's defaults.
        assert!(a.job.net.given.has("units") && !a.job.net.given.has("width"));
        assert_eq!(a.job.net.arch.width, 64);
    }

    #[test]
    fn bad_values_name_their_keyword_in_one_line() {
        for (v, needle) in [
            (
                ("units", Value::Str("x".into())),
                "units: invalid value 'x'",
            ),
            (
                ("placement", Value::Str("sideways".into())),
                "unknown placement 'sideways'",
            ),
            (("bn_mode", Value::Str("z".into())), "bn_mode"),
            (("nonsense", Value::Int(1)), "nonsense: no such argument"),
            (
                ("all_rows", Value::Int(1)),
                "all_rows: expected True or False",
            ),
        ] {
            let e = parse("profile", &values(std::slice::from_ref(&v)))
                .err()
                .unwrap();
            assert!(e.contains(needle), "{v:?}: {e}");
            assert!(!e.contains('\n') && !e.contains("--"), "{v:?}: {e}");
        }
        // A value that looks like a flag stays a value.
        let e = parse("shatter", &values(&[("width", Value::Int(-3))]))
            .err()
            .unwrap();
        assert!(e.starts_with("width: invalid value '-3'"), "{e}");
        let e = parse("train", &values(&[("lr", Value::Float(-0.5))]));
        assert!(e.is_ok(), "--lr -0.5 parses (and is refused later): {e:?}");
    }
}
