//! The explorer's API (`resprop serve`), over real HTTP on a loopback port: its answers are the
//! command line's CSV for the same request, every bad request is a 4xx with one line, a
//! cancelled computation stops, and concurrent clients are all answered.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use resprop::cli::serve::Server;
use serde_json::{json, Value};

use crate::common::*;

/// A server on a free loopback port, stopped when dropped.
struct Running(Option<Server>);

impl Running {
    fn start(checkpoints: Option<std::path::PathBuf>) -> Running {
        Running(Some(
            Server::start("127.0.0.1".parse().unwrap(), 0, checkpoints).unwrap(),
        ))
    }

    fn addr(&self) -> SocketAddr {
        self.0.as_ref().unwrap().addr
    }

    fn get(&self, path: &str) -> (u16, Vec<u8>) {
        http(self.addr(), "GET", path, b"")
    }

    /// POSTs `body` and returns the status and the parsed JSON answer.
    fn post(&self, path: &str, body: &[u8]) -> (u16, Value) {
        let (status, bytes) = http(self.addr(), "POST", path, body);
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{path}: not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, value)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.stop();
        }
    }
}

/// One HTTP/1.1 request on its own connection: status and body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, raw[split + 4..].to_vec())
}

/// A request written out whole (its head lines as given): status and body.
fn raw(addr: SocketAddr, head: &str, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap())
}

/// The command line's flags for a request's keywords (`units` as `--units`).
fn flags(request: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in request.as_object().unwrap() {
        let flag = format!("--{}", k.replace('_', "-"));
        match v {
            Value::Bool(true) => out.push(flag),
            Value::String(s) => out.push(format!("{flag}={s}")),
            other => out.push(format!("{flag}={other}")),
        }
    }
    out
}

/// The CSV `resprop <command> <flags> --csv` writes.
fn cli_csv(w: &Work, command: &str, flags: &[String]) -> String {
    let csv = w.path(format!("{command}.csv"));
    let mut args: Vec<&str> = vec![command];
    args.extend(flags.iter().map(String::as_str));
    let csv_arg = format!("--csv={}", s(&csv));
    args.push(&csv_arg);
    ok(&resprop(&args));
    std::fs::read_to_string(csv).unwrap()
}

#[test]
fn a_profile_or_paths_answer_is_the_command_lines_csv() {
    let w = Work::new();
    let server = Running::start(None);
    for request in [
        json!({"net": "mlp", "units": 6, "width": 8, "shortcut": "scale:0.9", "batch": 8, "seed": 3}),
        json!({"net": "mlp", "units": 4, "width": 8, "shortcut": "gate:-2", "placement": "original", "bn_mode": "eval"}),
        json!({"net": "resnet:1:basic", "image_size": 8, "batch": 4, "placement": "full-preact", "shortcut": "identity"}),
        json!({"net": "mlp", "units": 3, "width": 4, "norm": "none", "init": "fixup", "placement": "original", "unfused": true}),
        json!({"net": "resnet:1:basic", "data": "digits", "batch": 6, "seed": 2}),
        json!({"net": "resnet:1:basic", "image_size": 8, "batch": 4, "precision": "f32"}),
    ] {
        let (status, answer) = server.post("/api/profile", request.to_string().as_bytes());
        assert_eq!(status, 200, "{request}: {answer}");
        let want = cli_csv(&w, "profile", &flags(&request));
        assert_eq!(answer["csv"].as_str().unwrap(), want, "{request}");
        // The command the page shows writes the same file.
        let command = answer["command"].as_str().unwrap();
        let words: Vec<String> = command
            .split_whitespace()
            .skip(2)
            .take_while(|w| *w != "--csv")
            .map(str::to_string)
            .collect();
        assert!(command.starts_with("resprop profile "), "{command}");
        assert_eq!(cli_csv(&w, "profile", &words), want, "{command}");
    }
    let request =
        json!({"net": "mlp", "units": 5, "width": 4, "shortcut": "scale:0.5", "batch": 4});
    let (status, answer) = server.post("/api/paths", request.to_string().as_bytes());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["csv"].as_str().unwrap(),
        cli_csv(&w, "paths", &flags(&request))
    );
}

#[test]
fn the_page_and_its_assets_are_served_from_the_binary_and_nothing_else() {
    let server = Running::start(None);
    let (status, page) = server.get("/");
    let page = String::from_utf8(page).unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("/assets/uPlot.iife.min.js") && page.contains("/assets/explorer.js"));
    for asset in [
        "explorer.js",
        "explorer.css",
        "uPlot.iife.min.js",
        "uPlot.min.css",
    ] {
        let (status, bytes) = server.get(&format!("/assets/{asset}"));
        assert_eq!(status, 200, "{asset}");
        assert!(bytes.len() > 500, "{asset}");
    }
    // No file outside the compiled-in assets, however the path is spelled.
    for path in [
        "/assets/../Cargo.toml",
        "/assets/..%2f..%2fCargo.toml",
        "/assets//etc/passwd",
        "/Cargo.toml",
        "/assets/",
    ] {
        let (status, body) = server.get(path);
        assert_eq!(status, 404, "{path}: {}", String::from_utf8_lossy(&body));
    }
}

#[test]
fn bad_requests_are_refused_with_one_line_and_the_server_goes_on() {
    let server = Running::start(None);
    let big = format!("{{\"net\": \"{}\"}}", "x".repeat(2_000));
    for (method, path, body, status, needle) in [
        ("POST", "/api/profile", "not json", 400, "not JSON"),
        (
            "POST",
            "/api/profile",
            "[1, 2]",
            400,
            "a JSON object of keywords",
        ),
        (
            "POST",
            "/api/profile",
            r#"{"csv": "/tmp/x.csv"}"#,
            400,
            "csv: not a keyword the explorer takes",
        ),
        (
            "POST",
            "/api/profile",
            r#"{"model": "/etc/passwd"}"#,
            400,
            "model: not a keyword",
        ),
        ("POST", "/api/profile", r#"{"units": "many"}"#, 400, "units"),
        ("POST", "/api/profile", r#"{"units": -3}"#, 400, "units"),
        (
            "POST",
            "/api/profile",
            r#"{"shortcut": "scale:abc"}"#,
            400,
            "shortcut",
        ),
        (
            "POST",
            "/api/profile",
            r#"{"width": {"a": 1}}"#,
            400,
            "width: expected a number",
        ),
        (
            "POST",
            "/api/profile",
            r#"{"net": "resnet110", "units": 20}"#,
            400,
            "units",
        ),
        (
            "POST",
            "/api/profile",
            r#"{"units": 100000, "width": 100000, "batch": 128}"#,
            400,
            "memory",
        ),
        (
            "POST",
            "/api/profile",
            r#"{"checkpoint": "run1"}"#,
            400,
            "checkpoint: this server offers none",
        ),
        (
            "POST",
            "/api/profile",
            r#"{"data": "npz:/etc/passwd"}"#,
            400,
            "data: the explorer reads data sets named without a path",
        ),
        (
            "POST",
            "/api/profile",
            r#"{"data": "mnist:/tmp"}"#,
            400,
            "data: the explorer reads",
        ),
        ("POST", "/api/paths", r#"{"window": 2}"#, 400, "window"),
        (
            "POST",
            "/api/profile",
            big.as_str(),
            413,
            "larger than 1024 bytes",
        ),
        ("GET", "/api/profile", "", 405, "GET is not allowed"),
        ("DELETE", "/", "", 405, "DELETE is not allowed"),
        ("GET", "/api/nothing", "", 404, "no such page or endpoint"),
    ] {
        let (got, bytes) = http(server.addr(), method, path, body.as_bytes());
        let answer: Value = serde_json::from_slice(&bytes).unwrap();
        let error = answer["error"].as_str().unwrap_or_default();
        assert_eq!(
            got,
            status,
            "{method} {path} {}: {answer}",
            &body[..body.len().min(60)]
        );
        assert!(
            error.contains(needle) && !error.contains('\n'),
            "{method} {path}: '{needle}' not in one line: {error}"
        );
    }
    // Requests a page elsewhere could send: to another host name (DNS rebinding), a POST
    // that is not JSON (a form), a body announced with Expect.
    for (head, status, needle) in [
        (
            "POST /api/profile HTTP/1.1\r\nHost: attacker.example:8000\r\nContent-Type: application/json",
            421,
            "not to 'attacker.example:8000'",
        ),
        (
            "POST /api/cancel HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain",
            415,
            "Content-Type: application/json",
        ),
        (
            "POST /api/profile HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nExpect: 100-continue",
            417,
            "need no Expect header",
        ),
    ] {
        let (got, answer) = raw(server.addr(), head, r#"{"units": 2}"#);
        assert_eq!(got, status, "{head}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(needle), "{answer}");
    }
    // Still answering, a whole number written as a float included.
    let (status, answer) = server.post("/api/profile", br#"{"units": 2.0, "width": 4}"#);
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn checkpoints_are_offered_by_folder_name_and_profiled_as_the_command_line_does() {
    let w = Work::new();
    let dir = w.path("cks");
    std::fs::create_dir_all(dir.join("run1")).unwrap();
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/ck_sgd/checkpoint.npz"
    );
    std::fs::copy(fixture, dir.join("run1/checkpoint.npz")).unwrap();
    let server = Running::start(Some(dir.clone()));
    let (status, list) = http(server.addr(), "GET", "/api/checkpoints", b"");
    assert_eq!(status, 200);
    let list: Value = serde_json::from_slice(&list).unwrap();
    let offered = list["checkpoints"].as_array().unwrap();
    assert_eq!(offered.len(), 1, "{list}");
    // Each with the network and data it was trained with.
    assert_eq!(offered[0]["name"], "run1");
    assert!(
        offered[0]["net"].is_string() && offered[0]["data"] == "digits",
        "{list}"
    );
    let (status, answer) = server.post("/api/profile", br#"{"checkpoint": "run1", "batch": 8}"#);
    assert_eq!(status, 200, "{answer}");
    let want = cli_csv(
        &w,
        "profile",
        &[
            format!("--weights={}", s(&dir.join("run1/checkpoint.npz"))),
            "--batch=8".into(),
        ],
    );
    assert_eq!(answer["csv"].as_str().unwrap(), want);
    for name in ["../cks/run1", "run1/../run1", "/etc", "empty", "run2"] {
        let body = json!({ "checkpoint": name }).to_string();
        let (status, answer) = server.post("/api/profile", body.as_bytes());
        assert_eq!(status, 400, "{name}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("is not one of the checkpoints offered"),
            "{answer}"
        );
    }
}

/// Polls `/api/status` until a computation runs (a bounded wait, not a timing assertion).
fn wait_until_running(server: &Running) -> Value {
    for _ in 0..12_000 {
        let (_, bytes) = server.get("/api/status");
        let status: Value = serde_json::from_slice(&bytes).unwrap();
        if !status["running"].is_null() {
            return status;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("no computation started within a minute");
}

#[test]
fn a_cancelled_computation_stops_and_the_request_in_line_then_runs() {
    let server = std::sync::Arc::new(Running::start(None));
    // Veit's sampled estimate over many path lengths: long enough to be caught running.
    let long = json!({"net": "mlp", "units": 120, "width": 16, "batch": 8, "sample": 100000});
    let first = {
        let server = server.clone();
        std::thread::spawn(move || server.post("/api/paths", long.to_string().as_bytes()))
    };
    let status = wait_until_running(&server);
    assert!(
        status["running"]["what"]
            .as_str()
            .unwrap()
            .starts_with("resprop paths"),
        "{status}"
    );
    // A second request waits in line rather than being refused.
    let second = {
        let server = server.clone();
        std::thread::spawn(move || server.post("/api/profile", br#"{"units": 3, "width": 4}"#))
    };
    let (code, answer) = server.post("/api/cancel", b"");
    assert_eq!(code, 200);
    assert!(answer["cancelled"]
        .as_str()
        .unwrap()
        .starts_with("resprop paths"));
    let (code, answer) = first.join().unwrap();
    assert_eq!(code, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("interrupted"),
        "{answer}"
    );
    let (code, answer) = second.join().unwrap();
    assert_eq!(code, 200, "{answer}");
}

#[test]
fn a_cancelled_profile_stops_before_its_next_unit() {
    let server = std::sync::Arc::new(Running::start(None));
    // ResNet-110 at batch 32: seconds of work, cancelled as soon as it is seen running.
    let long = json!({"net": "resnet110", "batch": 32});
    let first = {
        let server = server.clone();
        std::thread::spawn(move || server.post("/api/profile", long.to_string().as_bytes()))
    };
    wait_until_running(&server);
    let (code, answer) = server.post("/api/cancel", b"");
    assert_eq!(code, 200);
    assert!(answer["cancelled"]
        .as_str()
        .unwrap()
        .starts_with("resprop profile"));
    let (code, answer) = first.join().unwrap();
    assert_eq!(code, 409, "{answer}");
    let message = answer["error"].as_str().unwrap();
    let stopped = stopped_unit(message);
    assert!(stopped.is_some_and(|l| l < 54), "{message}");
    // The server goes on.
    let (code, _) = server.post("/api/profile", br#"{"units": 3, "width": 4}"#);
    assert_eq!(code, 200);
}

/// The unit in "interrupted in the forward pass at unit 12 of 54".
fn stopped_unit(message: &str) -> Option<usize> {
    let rest = message
        .strip_prefix("interrupted in the forward pass at unit ")
        .or_else(|| message.strip_prefix("interrupted in the backward pass at unit "))?;
    let (unit, total) = rest.split_once(" of ")?;
    (total == "54").then_some(())?;
    unit.parse().ok()
}

#[test]
fn a_hundred_requests_from_four_clients_are_all_answered_correctly() {
    let w = Work::new();
    let server = std::sync::Arc::new(Running::start(None));
    let request =
        |units: u64| json!({"net": "mlp", "units": units, "width": 8, "batch": 8, "seed": units});
    let want: Vec<String> = (2..7)
        .map(|u| cli_csv(&w, "profile", &flags(&request(u))))
        .collect();
    let want = std::sync::Arc::new(want);
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (server, want) = (server.clone(), want.clone());
            std::thread::spawn(move || {
                for i in 0..25u64 {
                    let units = 2 + (c + i) % 5;
                    let (code, answer) =
                        server.post("/api/profile", request(units).to_string().as_bytes());
                    assert_eq!(code, 200, "client {c} request {i}: {answer}");
                    assert_eq!(answer["csv"].as_str().unwrap(), want[(units - 2) as usize]);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
}

/// A checkpoint trained on a user's file is not read again through the page: the server reads
/// no path that a checkpoint's contents name.
#[test]
fn a_checkpoint_of_data_given_by_a_path_is_refused() {
    let w = Work::new();
    // The user's own arrays: 128 vectors of 4 values, labels 0 and 1.
    let npz = w.path("mine.npz");
    let mut file = ndarray_npy::NpzWriter::new(std::fs::File::create(&npz).unwrap());
    let x = ndarray::Array2::<f64>::from_shape_fn((128, 4), |(i, j)| ((i * 7 + j * 3) % 11) as f64);
    let y = ndarray::Array1::<i64>::from_shape_fn(128, |i| (i % 2) as i64);
    file.add_array("x", &x).unwrap();
    file.add_array("y", &y).unwrap();
    file.finish().unwrap();
    let ck = w.path("cks/run2");
    let data = format!("npz:{}", s(&npz));
    ok(&resprop(&[
        "train",
        "--net",
        "mlp",
        "--units",
        "2",
        "--width",
        "4",
        "--epochs",
        "1",
        "--data",
        &data,
        "--checkpoint",
        &s(&ck),
    ]));
    let server = Running::start(Some(w.path("cks")));
    let (status, answer) = server.post("/api/profile", br#"{"checkpoint": "run2"}"#);
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("was trained on data given by a path"),
        "{answer}"
    );
}
