//! The explorer's HTTP API: the page's assets, and the profile and paths jobs as JSON.
//!
//! | request | answer |
//! |---|---|
//! | `GET /`, `GET /assets/NAME` | the page and its assets, compiled in |
//! | `POST /api/profile`, `POST /api/paths` | `{command, csv, loss}`: the job's CSV exactly as the command line writes it, and the command that writes it |
//! | `GET /api/status` | the computation running, if any, with its progress |
//! | `POST /api/cancel` | asks the running computation to stop |
//! | `GET /api/checkpoints` | the checkpoints `serve --checkpoints DIR` offers |
//!
//! A job's body is a JSON object of the keywords Python's functions take (`{"net": "mlp",
//! "units": 50, "shortcut": "scale:0.9"}`), parsed by the command line's parser; a checkpoint
//! is named by its folder (`"checkpoint": "run1"`), never by a path. Every refusal is a 4xx
//! with `{"error": "one line"}`; nothing a request holds can stop the server.

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value as Json};

use crate::cli::keywords::{self, Value};
use crate::cli::Command;
use crate::float::Precision;
use crate::interrupt::Interrupt;

/// The largest request body read. A job's keywords take a few hundred bytes; the server reads
/// bodies up to this size before a worker sees the request, so a client that sends its headers
/// and then stalls holds no worker.
pub const MAX_BODY: usize = 1024;

/// The keywords a job request may hold: the network and batch, not files (the page names a
/// checkpoint by its folder, a data set by its name without a path, and reads no model or
/// output path).
const NET_KEYWORDS: &[&str] = &[
    "net",
    "units",
    "width",
    "placement",
    "shortcut",
    "projection",
    "norm",
    "init",
    "input_dim",
    "image_size",
    "classes",
    "batch",
    "bn_mode",
    "seed",
    "unfused",
    "data",
];

/// Requests that may wait for the computation running (more are refused with a message): fewer
/// than the threads that read requests, so that status and cancel requests are answered.
pub const MAX_WAITING: usize = super::WORKERS - 2;

/// What the server shares between its threads.
pub struct State {
    /// The checkpoints folder, resolved.
    checkpoints: Option<PathBuf>,
    /// Bound to a loopback address: then only requests addressed to this machine's names are
    /// answered (a web page elsewhere cannot reach the API through a name it controls).
    loopback: bool,
    /// Held by the computation running: one at a time, the others wait in line.
    compute: Mutex<()>,
    /// Requests waiting for `compute`.
    waiting: AtomicUsize,
    /// The computation running now, if any.
    running: Mutex<Option<Running>>,
    /// The pool jobs run in (all cores), as the command line runs them.
    pool: rayon::ThreadPool,
}

/// A computation in progress: what it is, since when, how far, and its stop switch.
struct Running {
    what: String,
    started: Instant,
    /// Whether the job checks `stop` (paths does, between path lengths; a profile is one pass).
    stop: Arc<Interrupt>,
    done: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
}

impl State {
    pub fn new(checkpoints: Option<PathBuf>, loopback: bool) -> anyhow::Result<State> {
        let checkpoints = match checkpoints {
            Some(dir) => Some(
                std::fs::canonicalize(&dir)
                    .map_err(|e| anyhow::anyhow!("--checkpoints: '{}': {e}", dir.display()))?,
            ),
            None => None,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .build()
            .map_err(|e| anyhow::anyhow!("could not start the thread pool: {e}"))?;
        Ok(State {
            checkpoints,
            loopback,
            compute: Mutex::new(()),
            waiting: AtomicUsize::new(0),
            running: Mutex::new(None),
            pool,
        })
    }

    /// The checkpoint folders offered: each sub-folder of the checkpoints folder that holds
    /// a `checkpoint.npz`, by name, sorted.
    pub fn checkpoint_names(&self) -> Vec<String> {
        let Some(dir) = &self.checkpoints else {
            return Vec::new();
        };
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("checkpoint.npz").is_file())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        names.sort();
        names
    }
}

/// An answer: status, content type and body.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, value: Json) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
        }
    }

    fn error(status: u16, message: impl std::fmt::Display) -> Reply {
        Reply::json(status, json!({ "error": message.to_string() }))
    }
}

/// Answers one request on its connection (a panic in a job is a 500, not a dead thread).
pub fn answer(state: &State, mut request: tiny_http::Request) {
    let method = request.method().as_str().to_ascii_uppercase();
    let path = request
        .url()
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .to_string();
    let header = |name: &'static str| {
        request
            .headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str().to_string())
    };
    let refused = refuse_headers(
        state,
        &method,
        header("Host").as_deref(),
        header("Content-Type").as_deref(),
        header("Expect").is_some(),
    );
    let declared = request.body_length();
    let body = match refused {
        Some(reply) => Err(reply),
        None => read_body(request.as_reader(), declared),
    };
    let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        route(state, &method, &path, body)
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Reply::error(500, format!("internal error: {what}"))
    });
    // Always a Content-Length, never chunked: the answers are whole.
    let mut response = tiny_http::Response::from_data(reply.body)
        .with_status_code(reply.status)
        .with_chunked_threshold(usize::MAX);
    for (field, value) in [
        ("Content-Type", reply.content_type),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
    ] {
        response.add_header(
            tiny_http::Header::from_bytes(field.as_bytes(), value.as_bytes())
                .expect("ASCII header"),
        );
    }
    // The client may have gone; nothing to do then.
    let _ = request.respond(response);
}

/// Refuses a request addressed to another host name while bound to loopback, a POST that is
/// not JSON (a page elsewhere can send a form or text without asking; JSON it cannot), and a
/// body announced with `Expect` (the answers need no body that large).
fn refuse_headers(
    state: &State,
    method: &str,
    host: Option<&str>,
    content_type: Option<&str>,
    expect: bool,
) -> Option<Reply> {
    if state.loopback {
        // `127.0.0.1:8000`, `localhost:8000`, `[::1]:8000`: the name before the port.
        let name = host.map(|h| match h.rsplit_once(':') {
            Some((n, port)) if port.chars().all(|c| c.is_ascii_digit()) => n,
            _ => h,
        });
        if !matches!(name, Some("127.0.0.1" | "localhost" | "[::1]")) {
            return Some(Reply::error(
                421,
                format!(
                    "this server answers requests to 127.0.0.1 or localhost, not to '{}'",
                    host.unwrap_or_default()
                ),
            ));
        }
    }
    if method == "POST"
        && !content_type.is_some_and(|c| c.trim_start().starts_with("application/json"))
    {
        return Some(Reply::error(
            415,
            "a POST's body must be JSON, sent with Content-Type: application/json",
        ));
    }
    if expect {
        return Some(Reply::error(
            417,
            format!("requests are at most {MAX_BODY} bytes and need no Expect header"),
        ));
    }
    None
}

/// The body, at most [`MAX_BODY`] bytes (`Err`: too large or unreadable, as a reply).
fn read_body(reader: &mut dyn Read, declared: Option<usize>) -> Result<Vec<u8>, Reply> {
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(Reply::error(
            413,
            format!("the request body is larger than {MAX_BODY} bytes"),
        ));
    }
    let mut body = Vec::new();
    reader
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| Reply::error(400, format!("reading the request body: {e}")))?;
    if body.len() > MAX_BODY {
        return Err(Reply::error(
            413,
            format!("the request body is larger than {MAX_BODY} bytes"),
        ));
    }
    Ok(body)
}

/// The answer to `method path` with `body`.
pub fn route(state: &State, method: &str, path: &str, body: Result<Vec<u8>, Reply>) -> Reply {
    let body = match body {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    match (method, path) {
        ("GET" | "HEAD", "/") => asset("index.html"),
        ("GET" | "HEAD", p) if p.starts_with("/assets/") => asset(&p["/assets/".len()..]),
        ("GET", "/api/status") => status(state),
        ("GET", "/api/checkpoints") => checkpoints(state),
        ("POST", "/api/cancel") => cancel(state),
        ("POST", "/api/profile") => job(state, "profile", &body),
        ("POST", "/api/paths") => job(state, "paths", &body),
        (
            _,
            "/" | "/api/status" | "/api/checkpoints" | "/api/cancel" | "/api/profile"
            | "/api/paths",
        ) => Reply::error(405, format!("{method} is not allowed on {path}")),
        _ => Reply::error(404, format!("no such page or endpoint: {path}")),
    }
}

fn asset(name: &str) -> Reply {
    match super::assets::get(name) {
        Some((content_type, bytes)) => Reply {
            status: 200,
            content_type,
            body: bytes.to_vec(),
        },
        None => Reply::error(404, format!("no such asset: {name}")),
    }
}

/// The checkpoints offered, each with the network and data it was trained with (the page
/// builds the same network "at initialisation" from them).
fn checkpoints(state: &State) -> Reply {
    let list: Vec<Json> = state
        .checkpoint_names()
        .into_iter()
        .filter_map(|name| {
            let file = state
                .checkpoints
                .as_ref()?
                .join(&name)
                .join("checkpoint.npz");
            let c = crate::train::checkpoint::read_run_config(&file).ok()?;
            Some(json!({
                "name": name,
                "net": c.net,
                "units": c.units,
                "width": c.width,
                "placement": c.placement,
                "shortcut": c.shortcut,
                "norm": c.norm,
                "init": c.init,
                "data": c.data,
                "epochs": c.epochs,
            }))
        })
        .collect();
    Reply::json(200, json!({ "checkpoints": list }))
}

fn status(state: &State) -> Reply {
    let running = state.running.lock().unwrap_or_else(|e| e.into_inner());
    Reply::json(
        200,
        json!({
            "running": running.as_ref().map(|r| json!({
                "what": r.what,
                "elapsed_s": r.started.elapsed().as_secs_f64(),
                "done": r.done.load(Ordering::Relaxed),
                "total": r.total.load(Ordering::Relaxed),
            })),
        }),
    )
}

fn cancel(state: &State) -> Reply {
    let running = state.running.lock().unwrap_or_else(|e| e.into_inner());
    match running.as_ref() {
        Some(r) => {
            r.stop.request();
            Reply::json(200, json!({ "cancelled": r.what }))
        }
        None => Reply::json(200, json!({ "cancelled": null })),
    }
}

/// The job's keywords from a JSON object, with the checkpoint resolved in the served folder.
fn keywords_of(state: &State, name: &str, body: &[u8]) -> Result<Vec<(String, Value)>, Reply> {
    let parsed: Json = serde_json::from_slice(body)
        .map_err(|e| Reply::error(400, format!("the request body is not JSON: {e}")))?;
    let Json::Object(fields) = parsed else {
        return Err(Reply::error(
            400,
            "the request body must be a JSON object of keywords, e.g. {\"net\": \"mlp\", \"units\": 50}",
        ));
    };
    let extra: &[&str] = if name == "paths" {
        &["sample", "window"]
    } else {
        &["low_memory", "precision"]
    };
    let mut values = Vec::new();
    for (key, v) in fields {
        if key == "checkpoint" {
            values.push(("weights".to_string(), checkpoint_value(state, &v)?));
            continue;
        }
        if !NET_KEYWORDS.contains(&key.as_str()) && !extra.contains(&key.as_str()) {
            return Err(Reply::error(
                400,
                format!(
                    "{key}: not a keyword the explorer takes (it takes {}, {} and checkpoint)",
                    NET_KEYWORDS.join(", "),
                    extra.join(", ")
                ),
            ));
        }
        if key == "data" && v.as_str().is_none_or(|d| d.contains(':')) {
            return Err(Reply::error(
                400,
                format!("data: the explorer reads data sets named without a path (digits, fashion-mnist), not {v}"),
            ));
        }
        values.push((key.clone(), value_of(&key, &v)?));
    }
    Ok(values)
}

/// A JSON value as a keyword's value (an object is refused).
fn value_of(key: &str, v: &Json) -> Result<Value, Reply> {
    Ok(match v {
        Json::Null => Value::None,
        Json::Bool(b) => Value::Bool(*b),
        // A whole number written as a float (50.0, as Python's json writes a float) is the
        // integer; one beyond i64 stays exact as text.
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Int(i),
            (None, Some(u), _) => Value::Str(u.to_string()),
            (None, None, Some(f)) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => {
                Value::Int(f as i64)
            }
            (None, None, f) => Value::Float(f.unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::Str(s.clone()),
        Json::Array(items) => Value::List(
            items
                .iter()
                .map(|i| value_of(key, i))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(_) => {
            return Err(Reply::error(
                400,
                format!("{key}: expected a number, text, true/false or a list, got an object"),
            ))
        }
    })
}

/// A checkpoint named by its folder in the served checkpoints folder, as `--weights`' value.
fn checkpoint_value(state: &State, v: &Json) -> Result<Value, Reply> {
    let Some(dir) = &state.checkpoints else {
        return Err(Reply::error(
            400,
            "checkpoint: this server offers none (start it with --checkpoints DIR)",
        ));
    };
    let Json::String(name) = v else {
        return Err(Reply::error(400, "checkpoint: expected a folder's name"));
    };
    // Only the names the listing offers: no path, no '..', no link out of the folder.
    if !state.checkpoint_names().contains(name) {
        return Err(Reply::error(
            400,
            format!("checkpoint: '{name}' is not one of the checkpoints offered"),
        ));
    }
    let file = dir.join(name).join("checkpoint.npz");
    let resolved = std::fs::canonicalize(&file)
        .map_err(|e| Reply::error(400, format!("checkpoint: '{name}': {e}")))?;
    if !resolved.starts_with(dir) {
        return Err(Reply::error(
            400,
            format!("checkpoint: '{name}' points outside the checkpoints folder"),
        ));
    }
    // A checkpoint's network is sized for the data it was trained on, which is read again:
    // only data sets named without a path (the bundled digits, an installed Fashion-MNIST).
    let config = crate::train::checkpoint::read_run_config(&resolved)
        .map_err(|e| Reply::error(400, format!("checkpoint: '{name}': {e:#}")))?;
    if config.data.contains(':') {
        return Err(Reply::error(
            400,
            format!(
                "checkpoint: '{name}' was trained on data given by a path ({}), which the explorer does not read; profile it with resprop profile --weights",
                config.data
            ),
        ));
    }
    Ok(Value::Str(resolved.to_string_lossy().into_owned()))
}

/// The command line that computes what `values` ask (`--csv` naming its output).
fn command_line(name: &str, values: &[(String, Value)]) -> String {
    let Some(command) = keywords::subcommand(name) else {
        return String::new();
    };
    let argv = keywords::argv(&command, values).unwrap_or_default();
    let mut words: Vec<String> = argv
        .iter()
        .map(|a| shell_word(&a.to_string_lossy()))
        .collect();
    words.push(format!("--csv {name}.csv"));
    words.join(" ")
}

/// `word` quoted for a POSIX shell when it holds anything but plain characters.
fn shell_word(word: &str) -> String {
    if word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-./:=,+".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Clears the running computation's entry when dropped.
struct ClearRunning<'a>(&'a State);

impl Drop for ClearRunning<'_> {
    fn drop(&mut self) {
        *self.0.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Runs the profile or paths job a request asks for, one at a time.
fn job(state: &State, name: &str, body: &[u8]) -> Reply {
    let values = match keywords_of(state, name, body) {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    let parsed = match keywords::parse(name, &values) {
        Ok(c) => c,
        Err(e) => return Reply::error(400, e),
    };
    let (stop, done, total) = (
        Arc::new(Interrupt::new()),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let command = command_line(name, &values);
    // In line behind the computation running, if there is room in the line.
    if state.waiting.fetch_add(1, Ordering::SeqCst) >= MAX_WAITING {
        state.waiting.fetch_sub(1, Ordering::SeqCst);
        let running = state.running.lock().unwrap_or_else(|e| e.into_inner());
        let what = running.as_ref().map_or(String::new(), |r| {
            format!(
                " ({} has run for {:.1} s)",
                r.what,
                r.started.elapsed().as_secs_f64()
            )
        });
        return Reply::error(
            503,
            format!("busy: one computation at a time and {MAX_WAITING} waiting{what}; try again or cancel it"),
        );
    }
    let _turn = state.compute.lock().unwrap_or_else(|e| e.into_inner());
    state.waiting.fetch_sub(1, Ordering::SeqCst);
    {
        let mut running = state.running.lock().unwrap_or_else(|e| e.into_inner());
        *running = Some(Running {
            what: command.clone(),
            started: Instant::now(),
            stop: stop.clone(),
            done: done.clone(),
            total: total.clone(),
        });
    }
    // Cleared however the job ends, a panic included.
    let _clear = ClearRunning(state);
    let computed = state.pool.install(|| -> anyhow::Result<(Vec<u8>, f64)> {
        match parsed {
            Command::Profile(args) => {
                // The records are f64 whatever the passes ran in.
                let (analysis, profile) = match args.job.precision {
                    Precision::F64 => {
                        let run = args.job.run_as::<f64>(&stop)?;
                        (run.analysis, run.profile)
                    }
                    Precision::F32 => {
                        let run = args.job.run_as::<f32>(&stop)?;
                        (run.analysis, run.profile)
                    }
                };
                let a = &analysis.args;
                let csv = crate::analysis::record::profile_csv(
                    &profile,
                    &analysis.net,
                    a.arch.placement.name(),
                    &a.arch.shortcut.to_string(),
                )?;
                Ok((csv, profile.loss))
            }
            Command::Paths(args) => {
                let paths = args.job.run(
                    &|lengths| {
                        total.store(lengths, Ordering::Relaxed);
                        done.fetch_add(1, Ordering::Relaxed);
                    },
                    &stop,
                )?;
                let loss = f64::NAN;
                Ok((crate::schema::to_csv(&paths.rows, &[])?, loss))
            }
            _ => anyhow::bail!("no job '{name}'"),
        }
    });
    drop(_clear);
    match computed {
        Ok((csv, loss)) => Reply::json(
            200,
            json!({
                "command": command,
                "csv": String::from_utf8_lossy(&csv),
                "loss": loss.is_finite().then_some(loss),
            }),
        ),
        Err(e) => {
            let text = format!("{e:#}");
            let message = match keywords::subcommand(name) {
                Some(c) => keywords::keywords_for_flags(&text, &c),
                None => text,
            };
            let status = if e.downcast_ref::<crate::interrupt::Interrupted>().is_some() {
                409
            } else {
                400
            };
            Reply::error(status, message)
        }
    }
}
