//! Writing results: never a half-written file. Everything goes to a temporary file in the
//! destination directory first and is renamed into place only when complete.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Fails early (before a long computation) if `path` cannot be written.
pub fn check_writable(path: &Path) -> Result<()> {
    let dir = parent_dir(path);
    if !dir.is_dir() {
        bail!(
            "cannot write '{}': directory '{}' does not exist",
            path.display(),
            dir.display()
        );
    }
    if path.is_dir() {
        bail!("cannot write '{}': it is a directory", path.display());
    }
    let probe = tmp_path(path);
    File::create(&probe).with_context(|| format!("cannot write '{}'", path.display()))?;
    fs::remove_file(&probe).ok();
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    parent_dir(path).join(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes through `fill` into a temporary file, then renames it to `path`.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    let tmp = tmp_path(path);
    let result = (|| -> Result<()> {
        let file =
            File::create(&tmp).with_context(|| format!("cannot write '{}'", path.display()))?;
        let mut w = BufWriter::new(file);
        fill(&mut w)?;
        w.flush()?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, path).with_context(|| format!("cannot write '{}'", path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        fs::remove_file(&tmp).ok();
    }
    result
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| Ok(w.write_all(bytes)?))
}

/// Prints `text` to stdout; a closed pipe (`resprop ... | head`) ends output quietly instead
/// of panicking.
pub fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
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
}
