//! CIFAR-10 in its binary format: `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin`,
//! each a sequence of 3,073-byte records (one label byte 0..=9, then 1,024 red, 1,024 green and
//! 1,024 blue pixel bytes, row-major 32x32).

use std::path::Path;

use anyhow::{bail, Result};
use ndarray::IxDyn;

use super::{normalise_per_channel, Dataset, Split};
use crate::tensor::Tensor;

pub const RECORD: usize = 3073;
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
pub const TEST_FILE: &str = "test_batch.bin";

/// Reads one file's records, checking its size and every label.
pub fn read_file(path: &Path) -> Result<(Vec<f64>, Vec<usize>)> {
    // Five training batches of 10,000 records: a file more than twice that is not CIFAR-10.
    let bytes = crate::input::read(path, 2 * 50_000 * RECORD as u64, "CIFAR-10 file")?;
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        bail!(
            "'{}' is truncated or not CIFAR-10: {} bytes is not a multiple of {RECORD}",
            path.display(),
            bytes.len()
        );
    }
    let mut pixels = Vec::with_capacity(bytes.len() / RECORD * 3072);
    let mut labels = Vec::with_capacity(bytes.len() / RECORD);
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if rec[0] > 9 {
            bail!(
                "'{}': record {i} has label {} (CIFAR-10 labels are 0..=9)",
                path.display(),
                rec[0]
            );
        }
        labels.push(rec[0] as usize);
        pixels.extend(rec[1..].iter().map(|&b| b as f64 / 255.0));
    }
    Ok((pixels, labels))
}

fn read_files(dir: &Path, files: &[&str]) -> Result<Dataset> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for f in files {
        let (p, l) = read_file(&dir.join(f))?;
        pixels.extend(p);
        labels.extend(l);
    }
    let n = labels.len();
    Ok(Dataset {
        images: Tensor::from_shape_vec(IxDyn(&[n, 3, 32, 32]), pixels).unwrap(),
        labels,
    })
}

/// Loads the directory: the training files `data_batch_1.bin` .. `data_batch_<k>.bin` (all five,
/// or the first k of them for a smaller set; a gap is refused, so a lost file is not silently
/// left out), and the test file.
pub fn load(dir: &Path) -> Result<Split> {
    if dir.exists() && !dir.is_dir() {
        bail!(
            "CIFAR-10 directory '{}' is a file, not a directory (expected the folder holding data_batch_1.bin .. test_batch.bin)",
            dir.display()
        );
    }
    if !dir.is_dir() {
        bail!(
            "CIFAR-10 directory '{}' does not exist (expected data_batch_1.bin .. test_batch.bin)",
            dir.display()
        );
    }
    // Present means any directory entry (a FIFO or a dangling link too: reading it then says
    // what is wrong with it), not only a readable regular file.
    let present = |f: &&&str| dir.join(f).symlink_metadata().is_ok();
    let k = TRAIN_FILES.iter().take_while(present).count();
    if k == 0 {
        bail!("'{}' has no data_batch_1.bin", dir.display());
    }
    if let Some(later) = TRAIN_FILES[k..].iter().find(present) {
        bail!(
            "'{}' has {later} but not {}: give data_batch_1.bin .. data_batch_<k>.bin without a gap",
            dir.display(),
            TRAIN_FILES[k]
        );
    }
    let present = &TRAIN_FILES[..k];
    let mut train = read_files(dir, present)?;
    let mut test = read_files(dir, &[TEST_FILE])?;
    normalise_per_channel(&mut train.images, &mut test.images);
    Ok(Split {
        name: "cifar10".into(),
        train,
        test,
        classes: 10,
        augment: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, records: usize, label: u8) {
        let mut bytes = Vec::new();
        for i in 0..records {
            bytes.push(label);
            bytes.extend((0..3072).map(|j| ((i * 7 + j) % 256) as u8));
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    #[test]
    fn loads_small_files_in_the_binary_format() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "data_batch_1.bin", 5, 3);
        write(dir.path(), "data_batch_2.bin", 3, 7);
        write(dir.path(), TEST_FILE, 4, 1);
        let s = load(dir.path()).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (8, 4));
        assert_eq!(s.train.image_shape(), [3, 32, 32]);
        assert_eq!(s.train.labels[..6], [3, 3, 3, 3, 3, 7]);
    }

    #[test]
    fn a_gap_in_the_training_files_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "data_batch_1.bin", 2, 3);
        write(dir.path(), "data_batch_3.bin", 2, 3);
        write(dir.path(), TEST_FILE, 2, 1);
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("has data_batch_3.bin but not data_batch_2.bin"),
            "{e}"
        );
    }

    #[test]
    fn bad_inputs_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        write(dir.path(), "data_batch_1.bin", 2, 3);
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("test_batch.bin"), "{e}");
        std::fs::write(dir.path().join(TEST_FILE), vec![0u8; RECORD + 5]).unwrap();
        let e = format!("{:#}", load(dir.path()).unwrap_err());
        assert!(
            e.contains("test_batch.bin") && e.contains("multiple of 3073"),
            "{e}"
        );
        write(dir.path(), TEST_FILE, 2, 11);
        let e = format!("{:#}", load(dir.path()).unwrap_err());
        assert!(e.contains("label 11"), "{e}");
    }
}
