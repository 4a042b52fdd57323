//! MNIST and Fashion-MNIST in LeCun's IDX format: `train-images-idx3-ubyte`,
//! `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each raw or
//! gzip-compressed (`.gz`). An IDX file is a 4-byte magic (two zero bytes, the element type,
//! 0x08 for unsigned bytes, and the number of dimensions), the sizes as big-endian u32, then
//! the values row-major.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use ndarray::IxDyn;

use super::{normalise_per_channel, Dataset, Split};
use crate::tensor::Tensor;

/// Where Debian's `dataset-fashion-mnist` package puts the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The four files, without the optional `.gz`: training images and labels, test images and
/// labels.
pub const FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Bytes an IDX file may hold once decompressed: MNIST's training images are 47 MB; a bound
/// ten times that stops a corrupt or hostile size from exhausting memory.
const MAX_BYTES: u64 = 500 << 20;

/// The two names a file may have in `dir`: raw, then gzip-compressed.
pub fn candidates(dir: &Path, name: &str) -> [PathBuf; 2] {
    [dir.join(name), dir.join(format!("{name}.gz"))]
}

/// The file `name` in `dir`, raw or `.gz`, if either is there.
pub fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    candidates(dir, name)
        .into_iter()
        .find(|p| p.symlink_metadata().is_ok())
}

/// Whether `dir` holds all four files (raw or compressed).
pub fn complete(dir: &Path) -> bool {
    FILES.iter().all(|f| find(dir, f).is_some())
}

/// The decompressed bytes of `path` (gzip when its name ends in `.gz`), bounded.
fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let gz = path.extension().is_some_and(|e| e == "gz");
    if !gz {
        return crate::input::read(path, MAX_BYTES, "IDX file");
    }
    let packed = crate::input::read(path, MAX_BYTES, "IDX file")?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(packed.as_slice())
        .take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow!("'{}' is not a readable gzip file: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_BYTES {
        bail!(
            "'{}' holds more than {MAX_BYTES} bytes decompressed: not an MNIST-sized IDX file",
            path.display()
        );
    }
    Ok(bytes)
}

/// Parses an IDX file of unsigned bytes with `dims` dimensions: its sizes and its values.
pub fn parse<'a>(bytes: &'a [u8], dims: usize, path: &Path) -> Result<(Vec<usize>, &'a [u8])> {
    let name = path.display();
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        bail!("'{name}' is not an IDX file (it does not start with two zero bytes)");
    }
    if bytes[2] != 0x08 {
        bail!(
            "'{name}': IDX element type 0x{:02x}, expected 0x08 (unsigned bytes)",
            bytes[2]
        );
    }
    if bytes[3] as usize != dims {
        bail!(
            "'{name}' has {} dimensions, expected {dims} ({})",
            bytes[3],
            if dims == 3 { "images" } else { "labels" }
        );
    }
    let header = 4 + 4 * dims;
    if bytes.len() < header {
        bail!("'{name}' is truncated inside its header");
    }
    let sizes: Vec<usize> = (0..dims)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let count = sizes
        .iter()
        .try_fold(1usize, |a, &s| a.checked_mul(s))
        .filter(|&c| c as u64 <= MAX_BYTES)
        .ok_or_else(|| anyhow!("'{name}': sizes {sizes:?} are too large"))?;
    let values = &bytes[header..];
    if values.len() != count {
        bail!(
            "'{name}' is truncated or has trailing bytes: sizes {sizes:?} need {count} values, it holds {}",
            values.len()
        );
    }
    Ok((sizes, values))
}

/// One split's images (scaled to [0, 1]) and labels, checked against each other.
fn read_set(
    dir: &Path,
    images: &str,
    labels: &str,
    missing: &dyn Fn(&str) -> String,
) -> Result<Dataset> {
    let path = |name: &str| find(dir, name).ok_or_else(|| anyhow!(missing(name)));
    let (image_path, label_path) = (path(images)?, path(labels)?);
    let (image_file, label_file) = (read_bytes(&image_path)?, read_bytes(&label_path)?);
    let (sizes, pixels) = parse(&image_file, 3, &image_path)?;
    let (label_sizes, label_bytes) = parse(&label_file, 1, &label_path)?;
    if label_sizes[0] != sizes[0] {
        bail!(
            "'{}' has {} labels for the {} images of '{}'",
            label_path.display(),
            label_sizes[0],
            sizes[0],
            image_path.display()
        );
    }
    if sizes[0] == 0 {
        bail!("'{}' holds no image", image_path.display());
    }
    if let Some((i, &l)) = label_bytes.iter().enumerate().find(|(_, &l)| l > 9) {
        bail!(
            "'{}': label {i} is {l} (MNIST's classes are 0..=9)",
            label_path.display()
        );
    }
    let shape = [sizes[0], 1, sizes[1], sizes[2]];
    Ok(Dataset {
        images: Tensor::from_shape_vec(
            IxDyn(&shape),
            pixels.iter().map(|&b| b as f64 / 255.0).collect(),
        )
        .unwrap(),
        labels: label_bytes.iter().map(|&l| l as usize).collect(),
    })
}

/// Loads MNIST or Fashion-MNIST (`name`) from `dir`, each channel standardised with the
/// training split's mean and standard deviation. `install` says how to get the files, for the
/// error when one is missing.
pub fn load(dir: &Path, name: &str, install: &str) -> Result<Split> {
    if !dir.is_dir() {
        bail!("{name}: '{}' is not a directory; {install}", dir.display());
    }
    let missing = |file: &str| {
        format!(
            "{name}: '{}' has no {file} (or {file}.gz); {install}",
            dir.display()
        )
    };
    let mut train = read_set(dir, FILES[0], FILES[1], &missing)?;
    let mut test = read_set(dir, FILES[2], FILES[3], &missing)?;
    if train.image_shape() != test.image_shape() {
        bail!(
            "{name}: the training images are {:?} and the test images {:?}",
            train.image_shape(),
            test.image_shape()
        );
    }
    normalise_per_channel(&mut train.images, &mut test.images);
    Ok(Split {
        name: name.into(),
        train,
        test,
        classes: 10,
        augment: false,
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// An IDX file of unsigned bytes with these sizes and values.
    pub fn idx(sizes: &[u32], values: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, sizes.len() as u8];
        for s in sizes {
            b.extend(s.to_be_bytes());
        }
        b.extend(values);
        b
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// Writes a small set: `n` training and `n / 2` test images of 3x2, raw or compressed.
    pub fn write_set(dir: &Path, n: u32, compressed: bool) {
        let write = |name: &str, bytes: Vec<u8>| {
            if compressed {
                std::fs::write(dir.join(format!("{name}.gz")), gz(&bytes)).unwrap();
            } else {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        };
        for (images, labels, count) in [(FILES[0], FILES[1], n), (FILES[2], FILES[3], n / 2)] {
            let pixels: Vec<u8> = (0..count * 6).map(|i| (i * 37 % 256) as u8).collect();
            write(images, idx(&[count, 3, 2], &pixels));
            let l: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
            write(labels, idx(&[count], &l));
        }
    }

    #[test]
    fn raw_and_compressed_files_load_the_same() {
        let (raw, packed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_set(raw.path(), 8, false);
        write_set(packed.path(), 8, true);
        let a = load(raw.path(), "mnist", "").unwrap();
        let b = load(packed.path(), "mnist", "").unwrap();
        assert_eq!((a.train.len(), a.test.len()), (8, 4));
        assert_eq!(a.train.image_shape(), [1, 3, 2]);
        assert_eq!(a.train.labels, [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(a.fingerprint(), b.fingerprint());
        // Standardised with the training split's statistics.
        let mean = a.train.images.mean().unwrap();
        assert!(mean.abs() < 1e-12, "{mean}");
        // Pixel 0 of image 0 is byte 0; of image 1, byte 6 * 37 % 256 = 222: their difference
        // over the training split's standard deviation.
        let v: Vec<f64> = a.train.images.iter().copied().collect();
        let bytes: Vec<f64> = (0..48).map(|i| (i * 37 % 256) as f64 / 255.0).collect();
        let m = bytes.iter().sum::<f64>() / 48.0;
        let sd = (bytes.iter().map(|b| (b - m) * (b - m)).sum::<f64>() / 48.0).sqrt();
        assert!(((v[6] - v[0]) - (bytes[6] - bytes[0]) / sd).abs() < 1e-12);
    }

    #[test]
    fn bad_files_are_one_line_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path(), 4, false);
        let e = format!(
            "{:#}",
            load(&dir.path().join("nope"), "mnist", "HINT").unwrap_err()
        );
        assert!(e.contains("not a directory; HINT"), "{e}");
        let train_labels = dir.path().join(FILES[1]);
        std::fs::write(&train_labels, idx(&[3], &[1, 2, 3])).unwrap();
        let e = format!("{:#}", load(dir.path(), "mnist", "").unwrap_err());
        assert!(e.contains("3 labels for the 4 images"), "{e}");
        std::fs::write(&train_labels, idx(&[4], &[1, 2, 3, 12])).unwrap();
        let e = format!("{:#}", load(dir.path(), "mnist", "").unwrap_err());
        assert!(e.contains("label 3 is 12"), "{e}");
        let images = dir.path().join(FILES[0]);
        std::fs::write(&images, idx(&[4, 3, 2], &[0; 20])).unwrap();
        let e = format!("{:#}", load(dir.path(), "mnist", "").unwrap_err());
        assert!(e.contains("need 24 values, it holds 20"), "{e}");
        std::fs::write(&images, b"PK\x03\x04 a zip").unwrap();
        let e = format!("{:#}", load(dir.path(), "mnist", "").unwrap_err());
        assert!(e.contains("not an IDX file"), "{e}");
        std::fs::write(&images, idx(&[u32::MAX, u32::MAX, 9], &[])).unwrap();
        let e = format!("{:#}", load(dir.path(), "mnist", "").unwrap_err());
        assert!(e.contains("too large"), "{e}");
        std::fs::write(dir.path().join("x.gz"), b"not gzip").unwrap();
        std::fs::remove_file(&images).unwrap();
        std::fs::rename(
            dir.path().join("x.gz"),
            dir.path().join(format!("{}.gz", FILES[0])),
        )
        .unwrap();
        let e = format!("{:#}", load(dir.path(), "mnist", "").unwrap_err());
        assert!(e.contains("not a readable gzip file"), "{e}");
        std::fs::remove_file(dir.path().join(format!("{}.gz", FILES[0]))).unwrap();
        let e = format!("{:#}", load(dir.path(), "mnist", "HINT").unwrap_err());
        assert!(
            e.contains("has no train-images-idx3-ubyte (or train-images-idx3-ubyte.gz); HINT"),
            "{e}"
        );
    }
}
