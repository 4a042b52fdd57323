//! `resprop serve`: the explorer, a local web page where every change of the network answers
//! with its measured gradient profile.
//!
//! The page and its chart library are compiled into the binary ([`assets`]); nothing is
//! fetched at run time. Its API ([`api`]) takes the requests the command line and Python take
//! (the same keywords, parsed by the same parser) and answers with the command line's CSV.
//! One computation runs at a time; the requests that arrive meanwhile wait in line (a few; more
//! are refused with a message). Requests are read by several threads, so a status or cancel
//! request is answered while a computation runs.

pub mod api;
pub mod assets;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Address to bind. The default, 127.0.0.1, lets only this machine connect; 0.0.0.0 lets
    /// the network in (the API computes whatever it is asked, within the memory preflight).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Open the page in the default browser (xdg-open, open or start).
    #[arg(long)]
    pub open: bool,
    /// A folder of checkpoints (`train --checkpoint DIR` writes DIR/checkpoint.npz): each
    /// sub-folder holding one can be profiled from the page, "after training" beside "at
    /// initialisation". Nothing outside it is read.
    #[arg(long, value_name = "DIR")]
    pub checkpoints: Option<PathBuf>,
}

/// Threads that read requests: some wait for the computation ([`api::MAX_WAITING`]) while the
/// others answer status, cancel and page requests.
const WORKERS: usize = 8;

/// A running server: its address, and the handle that stops it.
pub struct Server {
    pub addr: SocketAddr,
    http: Arc<tiny_http::Server>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Binds `host:port` and starts answering.
    pub fn start(host: IpAddr, port: u16, checkpoints: Option<PathBuf>) -> Result<Server> {
        let state = Arc::new(api::State::new(checkpoints, host.is_loopback())?);
        let http = tiny_http::Server::http(SocketAddr::new(host, port))
            .map_err(|e| anyhow::anyhow!("--port: could not listen on {host}:{port}: {e}"))?;
        let addr = http
            .server_addr()
            .to_ip()
            .context("the server listens on an IP address")?;
        let http = Arc::new(http);
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers = (0..WORKERS)
            .map(|_| {
                let (http, state, stopping) = (http.clone(), state.clone(), stopping.clone());
                std::thread::spawn(move || loop {
                    match http.recv() {
                        Ok(request) => api::answer(&state, request),
                        // Unblocked by `stop`; another error is one connection's, not the end.
                        Err(_) if stopping.load(std::sync::atomic::Ordering::SeqCst) => break,
                        Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                    }
                })
            })
            .collect();
        Ok(Server {
            addr,
            http,
            stopping,
            workers,
        })
    }

    /// Stops accepting requests and waits for the workers (a computation running finishes).
    pub fn stop(self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for _ in &self.workers {
            self.http.unblock();
        }
        for w in self.workers {
            let _ = w.join();
        }
    }
}

pub fn run(args: &ServeArgs) -> Result<ExitCode> {
    if let Some(dir) = &args.checkpoints {
        if !dir.is_dir() {
            anyhow::bail!("--checkpoints: '{}' is not a folder", dir.display());
        }
    }
    // A server waits between requests, so the memory a computation freed goes back to the
    // system at once (the binary keeps it for reuse when training, main.rs). Measured on
    // ResNet-110 at batch 32: without this 1.2 GB stays held after one profile, with it 55 MB,
    // for a profile 1.6x slower (2.1 s against 1.3 s; a purge delay of 1 s, or a collection
    // after the job, returned nothing).
    // SAFETY: a plain integer option (mi_option_purge_delay is 15; 0: purge at once).
    unsafe { libmimalloc_sys::mi_option_set(15, 0) };
    let server = Server::start(args.host, args.port, args.checkpoints.clone())?;
    let url = format!("http://{}/", server.addr);
    println!("resprop explorer at {url} (Ctrl-C stops it)");
    if args.open {
        open_browser(&url);
    }
    // The workers answer until the process ends.
    for w in server.workers {
        let _ = w.join();
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks the desktop to open `url`; says so when it cannot (the address is printed anyway).
fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if cfg!(windows) {
        "explorer"
    } else {
        "xdg-open"
    };
    if let Err(e) = std::process::Command::new(opener)
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        eprintln!("note: --open: could not start {opener} ({e}); open {url} yourself");
    }
}
