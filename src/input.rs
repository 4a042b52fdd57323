//! Reading the files a command is given: only regular files, and each only up to a bound.
//!
//! A path may name a FIFO (opening it for reading blocks until a writer comes), a device
//! (`/dev/zero` never ends) or a symbolic link to either. Every file resprop reads goes through
//! [`open`], which opens without blocking, asks the opened file (not the path, which could be
//! swapped in between) what it is, and refuses anything but a regular file; [`read`] and
//! [`read_text`] then read at most a stated number of bytes, so a file that grows while it is
//! read cannot exhaust memory either.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Result};

/// An experiment file, a results folder's `spec.toml`, a cell's manifest: text written by hand
/// or by resprop, never near this size.
pub const MAX_SPEC_BYTES: u64 = 16 << 20;

/// A CSV table read back (by `plot`, `merge` and the cell store). The largest the bundled
/// experiments write is a few MB; ResNet-1001 profiles over many seeds stay well below this.
pub const MAX_TABLE_BYTES: u64 = 4 << 30;

/// Opens the regular file `path` for reading; `what` names it in errors ("--weights",
/// "experiment file"). Returns the file and its length.
pub fn open(path: &Path, what: &str) -> Result<(File, u64)> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Without O_NONBLOCK, opening a FIFO waits for a writer that may never come.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options
        .open(path)
        .map_err(|e| anyhow!("cannot read {what} '{}': {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| anyhow!("cannot read {what} '{}': {e}", path.display()))?;
    if meta.is_dir() {
        bail!("cannot read {what} '{}': it is a directory", path.display());
    }
    if !meta.is_file() {
        bail!(
            "cannot read {what} '{}': it is not a regular file (a FIFO, a device or a socket)",
            path.display()
        );
    }
    Ok((file, meta.len()))
}

/// The bytes of the regular file `path`, refusing one larger than `max_bytes`.
pub fn read(path: &Path, max_bytes: u64, what: &str) -> Result<Vec<u8>> {
    let (file, len) = open(path, what)?;
    let too_big = |n: u64| {
        anyhow!(
            "cannot read {what} '{}': {n} bytes, more than the {max_bytes} such a file can hold",
            path.display()
        )
    };
    if len > max_bytes {
        return Err(too_big(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // One byte more than the bound tells a file that grew past it from one that ends there.
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow!("cannot read {what} '{}': {e}", path.display()))?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// The text of the regular file `path` (UTF-8), refusing one larger than `max_bytes`.
pub fn read_text(path: &Path, max_bytes: u64, what: &str) -> Result<String> {
    String::from_utf8(read(path, max_bytes, what)?).map_err(|_| {
        anyhow!(
            "cannot read {what} '{}': it is not UTF-8 text",
            path.display()
        )
    })
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let e = read(&fifo, 10, "test file").unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn a_device_and_a_directory_are_refused() {
        let e = read(Path::new("/dev/zero"), 10, "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = read(Path::new("/"), 10, "x").unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
    }

    #[test]
    fn the_bound_holds() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"0123456789").unwrap();
        assert_eq!(read(&f, 10, "x").unwrap().len(), 10);
        let e = read(&f, 9, "x").unwrap_err().to_string();
        assert!(e.contains("10 bytes, more than the 9"), "{e}");
    }
}
