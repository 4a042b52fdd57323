//! Writing results: never a half-written file, never a file the user did not name, never a
//! special file replaced.
//!
//! A regular file is written to a temporary file beside it (`.<name>.<pid>.tmp`) and renamed
//! into place only when complete; temporaries that a killed run left beside the same output
//! are removed by the next write of it ([`sweep_stale_temps`]). A path through a symbolic link
//! is written where the link points. A character device or a FIFO (`/dev/null`,
//! `/dev/stdout`, a named pipe) is written in place, as a shell's `>` would: renaming over it
//! would replace the device. Other special files (block devices, sockets) are refused.
//!
//! [`Outputs`] checks a command's output files together before any work starts: each can be
//! written, no two name the same file, and none is a file the command reads.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// What an output path names now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// Nothing yet: the file will be created.
    New,
    /// A regular file, at this path once symbolic links are followed.
    Regular(PathBuf),
    /// A character device or a FIFO: written in place.
    Stream,
}

#[cfg(unix)]
fn is_stream(t: &fs::FileType) -> bool {
    use std::os::unix::fs::FileTypeExt;
    t.is_char_device() || t.is_fifo()
}

#[cfg(not(unix))]
fn is_stream(_: &fs::FileType) -> bool {
    false
}

/// Whether `path` names a character device or a FIFO (`/dev/null`, `/dev/stdout`, a named
/// pipe), which outputs are written into in place: no file can be put beside it.
pub fn is_stream_path(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| is_stream(&m.file_type()))
}

fn is_fifo(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

fn target(path: &Path) -> Result<Target> {
    let link = fs::symlink_metadata(path);
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => bail!("cannot write '{}': it is a directory", path.display()),
        Ok(m) if m.is_file() => Ok(Target::Regular(
            fs::canonicalize(path).with_context(|| format!("cannot write '{}'", path.display()))?,
        )),
        Ok(m) if is_stream(&m.file_type()) => Ok(Target::Stream),
        Ok(_) => bail!(
            "cannot write '{}': it is a special file (not a regular file, a character device or a FIFO)",
            path.display()
        ),
        Err(_) if link.is_ok() => bail!(
            "cannot write '{}': it is a symbolic link to a missing file",
            path.display()
        ),
        Err(_) => {
            let dir = parent_dir(path);
            if !dir.is_dir() {
                bail!(
                    "cannot write '{}': directory '{}' does not exist",
                    path.display(),
                    dir.display()
                );
            }
            Ok(Target::New)
        }
    }
}

/// Fails early (before a long computation) if `path` cannot be written.
pub fn check_writable(path: &Path) -> Result<()> {
    let real = match target(path)? {
        Target::Stream => return Ok(()),
        Target::Regular(real) => {
            // An immutable or read-only file would only fail at the final rename, after the
            // work: open it for writing now (appending nothing; its bytes stay as they are).
            OpenOptions::new()
                .append(true)
                .open(&real)
                .with_context(|| format!("cannot write '{}'", path.display()))?;
            real
        }
        Target::New => path.to_path_buf(),
    };
    let probe = tmp_path(&real);
    File::create(&probe).with_context(|| format!("cannot write '{}'", path.display()))?;
    fs::remove_file(&probe).ok();
    Ok(())
}

/// The temporary file an output is written to before it is renamed into place.
fn tmp_path(path: &Path) -> PathBuf {
    parent_dir(path).join(format!(
        ".{}.{}.tmp",
        temp_stem(&file_name(path)),
        std::process::id()
    ))
}

/// Longest output name kept whole in its temporary's name: with the dot, the process id and
/// `.tmp` it stays within the 255 bytes a file name may have.
const MAX_TEMP_STEM: usize = 230;

/// The `<name>` part of a temporary `.<name>.<pid>.tmp`: the output's name, or for a name too
/// long to take the extra bytes, its first 200 bytes and a digest of the whole.
fn temp_stem(name: &str) -> String {
    if name.len() <= MAX_TEMP_STEM {
        return name.to_string();
    }
    let mut cut = 200;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = crate::util::sha256_hex(name.as_bytes());
    format!("{}~{}", &name[..cut], &digest[..16])
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into())
}

/// The process id in a temporary file's name `.<name>.<pid>.tmp` (for any `<name>` when
/// `name` is `None`).
fn temp_owner(file: &str, name: Option<&str>) -> Option<u32> {
    let rest = file.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (stem, pid) = rest.rsplit_once('.')?;
    if name.is_some_and(|n| temp_stem(n) != stem) || pid.is_empty() {
        return None;
    }
    pid.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the temporaries in `dir` that a process no longer running left while writing
/// (`name`, or any output when `None`): what a run killed mid-write leaves. A temporary of a
/// process still running, this one or another writing beside it, is left alone. Returns how
/// many it removed.
pub fn sweep_stale_temps(dir: &Path, name: Option<&str>) -> usize {
    // Without /proc no owner can be told alive or dead: sweep nothing.
    if !Path::new("/proc/self").exists() {
        return 0;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| {
            temp_owner(&e.file_name().to_string_lossy(), name).is_some_and(|p| !process_alive(p))
        })
        .filter(|e| fs::remove_file(e.path()).is_ok())
        .count()
}

/// An I/O error from writing `path` (a full disk, a closed pipe) names the file; other errors
/// from a writer name what they are about already.
fn name_io_error(e: anyhow::Error, path: &Path) -> anyhow::Error {
    if e.downcast_ref::<std::io::Error>().is_some() {
        e.context(format!("cannot write '{}'", path.display()))
    } else {
        e
    }
}

/// Writes through `fill` into a temporary file, then renames it to `path` (a character device
/// or FIFO is written in place instead; see the module's description).
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    let real = match target(path)? {
        Target::Stream => {
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .with_context(|| format!("cannot write '{}'", path.display()))?;
            let mut w = BufWriter::new(file);
            fill(&mut w).map_err(|e| name_io_error(e, path))?;
            return w
                .flush()
                .with_context(|| format!("cannot write '{}'", path.display()));
        }
        Target::Regular(real) => real,
        Target::New => path.to_path_buf(),
    };
    sweep_stale_temps(&parent_dir(&real), Some(&file_name(&real)));
    let tmp = tmp_path(&real);
    let result = (|| -> Result<()> {
        let file =
            File::create(&tmp).with_context(|| format!("cannot write '{}'", path.display()))?;
        let mut w = BufWriter::new(file);
        fill(&mut w).map_err(|e| name_io_error(e, path))?;
        w.flush()
            .with_context(|| format!("cannot write '{}'", path.display()))?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, &real).with_context(|| format!("cannot write '{}'", path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        fs::remove_file(&tmp).ok();
    }
    result
}

/// Writes `bytes` to a file resprop keeps for itself (a cell of the store): a FIFO or a device
/// found in its place is refused, not written into (writing a FIFO would wait for a reader).
pub fn write_own_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if is_stream_path(path) {
        bail!(
            "cannot write '{}': it is a FIFO or a device, not the file resprop keeps there; remove it",
            path.display()
        );
    }
    write_atomic(path, bytes)
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| Ok(w.write_all(bytes)?))
}

/// Creates the output directory `dir` (and its parents), naming `flag` when it cannot: an
/// existing file in the way is reported as such.
pub fn create_dir(flag: &str, dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!(
            "{flag}: '{}' is not a directory (it is a file)",
            dir.display()
        );
    }
    fs::create_dir_all(dir)
        .with_context(|| format!("{flag}: cannot create the directory '{}'", dir.display()))
}

/// Which file a path names, to tell two spellings of one file apart from two files: the
/// file's canonical path when it exists, else its directory's canonical path and its name.
fn identity(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = fs::canonicalize(path) {
        return Some(p);
    }
    let dir = fs::canonicalize(parent_dir(path)).ok()?;
    Some(dir.join(path.file_name()?))
}

/// The files one command writes and reads, checked together before any work starts.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Flag, path, and whether the format needs to seek (a zip archive: `.npz`).
    writes: Vec<(String, PathBuf, bool)>,
    reads: Vec<(String, PathBuf)>,
}

impl Outputs {
    pub fn new() -> Outputs {
        Outputs::default()
    }

    /// An output file, named by its flag (or a description: "the checkpoint").
    pub fn write(mut self, flag: &str, path: Option<&Path>) -> Outputs {
        if let Some(p) = path {
            self.writes.push((flag.to_string(), p.to_path_buf(), false));
        }
        self
    }

    /// An `.npz` output: a zip archive, written with seeks, so not into a FIFO.
    pub fn write_npz(mut self, flag: &str, path: Option<&Path>) -> Outputs {
        if let Some(p) = path {
            self.writes.push((flag.to_string(), p.to_path_buf(), true));
        }
        self
    }

    /// A file the command reads, which no output may replace.
    pub fn read(mut self, flag: &str, path: Option<&Path>) -> Outputs {
        if let Some(p) = path {
            self.reads.push((flag.to_string(), p.to_path_buf()));
        }
        self
    }

    /// The files of the data set `spec`, read with `flag`.
    pub fn read_data(mut self, flag: &str, spec: Option<&crate::data::DataSpec>) -> Outputs {
        for file in spec.map(|s| s.files()).unwrap_or_default() {
            self.reads.push((flag.to_string(), file));
        }
        self
    }

    /// Every output can be written, no two name one file and none is an input. Character
    /// devices and FIFOs may take several outputs (`--csv /dev/null --npz /dev/null`).
    pub fn check(&self) -> Result<()> {
        let mut seen: Vec<(&str, &Path, PathBuf)> = Vec::new();
        for (flag, path, seeks) in &self.writes {
            check_writable(path).map_err(|e| anyhow::anyhow!("{flag}: {e:#}"))?;
            if matches!(target(path)?, Target::Stream) {
                if *seeks && is_fifo(path) {
                    bail!(
                        "{flag}: cannot write '{}': it is a FIFO, and an .npz is a zip archive, written with seeks",
                        path.display()
                    );
                }
                continue;
            }
            let Some(id) = identity(path) else { continue };
            if let Some((other, other_path, _)) = seen.iter().find(|(_, _, i)| *i == id) {
                bail!(
                    "{other} and {flag} both name '{}'{}: give each output a file of its own",
                    other_path.display(),
                    if *other_path != path.as_path() {
                        format!(" (as '{}')", path.display())
                    } else {
                        String::new()
                    }
                );
            }
            for (input, input_path) in &self.reads {
                if identity(input_path).as_ref() == Some(&id) {
                    bail!(
                        "{flag} names '{}', the file {input} reads: the output would replace it",
                        path.display()
                    );
                }
            }
            seen.push((flag, path, id));
        }
        Ok(())
    }
}

/// Prints `text` to stdout; a closed pipe (`resprop ... | head`) ends output quietly instead
/// of panicking.
pub fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| anyhow::anyhow!("cannot write to standard output: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        let err = write_atomic_with(&path, |w| {
            w.write_all(b"partial")?;
            bail!("interrupted")
        });
        assert!(err.is_err());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no file, no temporary left behind"
        );
    }

    #[test]
    fn missing_directory_is_reported() {
        let e = check_writable(Path::new("/nonexistent-dir-xyz/out.csv")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn temporary_names_parse() {
        assert_eq!(temp_owner(".a.csv.123.tmp", Some("a.csv")), Some(123));
        assert_eq!(temp_owner(".a.csv.123.tmp", None), Some(123));
        assert_eq!(temp_owner(".a.csv.123.tmp", Some("b.csv")), None);
        assert_eq!(temp_owner("a.csv.123.tmp", None), None);
        assert_eq!(temp_owner(".a.csv.x.tmp", None), None);
        assert_eq!(temp_owner(".a.csv", None), None);
    }

    #[test]
    fn a_dead_writers_temporary_is_swept_a_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        // No process has id u32::MAX - 1 (Linux's pid_max is at most 2^22).
        let dead = dir.path().join(format!(".out.csv.{}.tmp", u32::MAX - 1));
        let mine = dir
            .path()
            .join(format!(".out.csv.{}.tmp", std::process::id()));
        let other = dir.path().join(format!(".other.csv.{}.tmp", u32::MAX - 1));
        for p in [&dead, &mine, &other] {
            fs::write(p, b"x").unwrap();
        }
        write_atomic(&dir.path().join("out.csv"), b"done").unwrap();
        assert!(
            !dead.exists(),
            "the dead writer's temporary of the same output"
        );
        assert!(
            other.exists(),
            "another output's temporary waits for its own write"
        );
        assert_eq!(sweep_stale_temps(dir.path(), None), 1);
        assert!(!other.exists());
        assert_eq!(fs::read(dir.path().join("out.csv")).unwrap(), b"done");
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_written_in_place_and_a_link_where_it_points() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || fs::read(&fifo).unwrap())
        };
        write_atomic(&fifo, b"through the pipe").unwrap();
        assert_eq!(reader.join().unwrap(), b"through the pipe");
        assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());

        let real = dir.path().join("real.csv");
        fs::write(&real, b"old").unwrap();
        let link = dir.path().join("link.csv");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(fs::read(&real).unwrap(), b"new");
        // /dev/null stays a device.
        write_atomic(Path::new("/dev/null"), b"gone").unwrap();
        assert!(fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device());
    }

    #[test]
    fn two_outputs_on_one_file_or_on_an_input_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.csv");
        let also_a = dir.path().join(".").join("a.csv");
        let e = Outputs::new()
            .write("--csv", Some(&a))
            .write("--npz", Some(&also_a))
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--csv and --npz both name"), "{e}");
        let input = dir.path().join("ck.npz");
        fs::write(&input, b"x").unwrap();
        let e = Outputs::new()
            .read("--weights", Some(&input))
            .write("--csv", Some(&input))
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("the file --weights reads"), "{e}");
        Outputs::new()
            .write("--csv", Some(Path::new("/dev/null")))
            .write("--npz", Some(Path::new("/dev/null")))
            .write("--weight-grad-csv", Some(&a))
            .check()
            .unwrap();
    }
}
