//! Real data: the bundled UCI digits and the CIFAR-10 binary format.
//!
//! Images are kept as `(N, C, H, W)` f64 tensors, normalised with statistics of the training
//! split only; the MLP sees them flattened.

pub mod cifar;
pub mod digits;

use ndarray::{Axis, IxDyn};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Result;

use crate::tensor::Tensor;

/// Where the data comes from: `digits` (the bundled UCI digits) or `cifar10:<directory>`
/// (the binary version). The one parser of that syntax, for the CLI and experiment files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSpec {
    Digits,
    Cifar10(PathBuf),
}

impl FromStr for DataSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "digits" {
            return Ok(DataSpec::Digits);
        }
        match s.strip_prefix("cifar10:") {
            Some(dir) if !dir.is_empty() => Ok(DataSpec::Cifar10(PathBuf::from(dir))),
            _ => Err(format!(
                "unknown data '{s}' (expected 'digits' or 'cifar10:<directory>')"
            )),
        }
    }
}

impl fmt::Display for DataSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSpec::Digits => write!(f, "digits"),
            DataSpec::Cifar10(dir) => write!(f, "cifar10:{}", dir.display()),
        }
    }
}

impl DataSpec {
    /// The files the data set is read from (none for the bundled digits): what no output may
    /// replace.
    pub fn files(&self) -> Vec<std::path::PathBuf> {
        match self {
            DataSpec::Digits => Vec::new(),
            DataSpec::Cifar10(dir) => cifar::TRAIN_FILES
                .iter()
                .chain([&cifar::TEST_FILE])
                .map(|f| dir.join(f))
                .collect(),
        }
    }
}

/// Loads the training and test split `spec` names.
pub fn load(spec: &DataSpec) -> anyhow::Result<Split> {
    match spec {
        DataSpec::Digits => digits::load(),
        DataSpec::Cifar10(dir) => cifar::load(dir),
    }
}

#[derive(Debug, Clone)]
pub struct Dataset {
    /// (N, C, H, W)
    pub images: Tensor,
    pub labels: Vec<usize>,
}

/// A training and a test set from one source.
#[derive(Debug, Clone)]
pub struct Split {
    pub name: String,
    pub train: Dataset,
    pub test: Dataset,
    pub classes: usize,
    /// Random crop (pad 4) and horizontal flip on training batches (CIFAR's augmentation).
    pub augment: bool,
}

impl Split {
    /// A digest of every image and label of both parts (hex SHA-256): what a result computed
    /// from this data depends on, whatever file it was read from.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.name.as_bytes());
        h.update([u8::from(self.augment)]);
        for set in [&self.train, &self.test] {
            h.update(format!("{:?}", set.images.shape()).as_bytes());
            for v in set.images.iter() {
                h.update(v.to_le_bytes());
            }
            for &l in &set.labels {
                h.update((l as u64).to_le_bytes());
            }
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `(C, H, W)` of one image.
    pub fn image_shape(&self) -> [usize; 3] {
        let s = self.images.shape();
        [s[1], s[2], s[3]]
    }

    /// The images at `idx`, as `(n, C, H, W)` or flattened `(n, C H W)`.
    pub fn batch(&self, idx: &[usize], flat: bool) -> (Tensor, Vec<usize>) {
        let x = self.images.select(Axis(0), idx);
        let labels = idx.iter().map(|&i| self.labels[i]).collect();
        if flat {
            let n = idx.len();
            let d = x.len() / n.max(1);
            (x.into_shape_with_order(IxDyn(&[n, d])).unwrap(), labels)
        } else {
            (x, labels)
        }
    }
}

/// Pad-4 random crop and horizontal flip of each image, in place (seeded).
pub fn augment(x: &mut Tensor, rng: &mut ChaCha8Rng) {
    let (n, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    for i in 0..n {
        let (dy, dx) = (
            rng.random_range(0..9) as isize - 4,
            rng.random_range(0..9) as isize - 4,
        );
        let flip = rng.random::<bool>();
        let src = x.index_axis(Axis(0), i).to_owned();
        let mut dst = x.index_axis_mut(Axis(0), i);
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    let sx = if flip { w - 1 - xx } else { xx } as isize + dx;
                    let sy = y as isize + dy;
                    dst[[ch, y, xx]] = if sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize {
                        src[[ch, sy as usize, sx as usize]]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// Subtracts the training split's per-pixel mean from both splits and divides by the
/// training split's overall standard deviation.
pub fn normalise_per_pixel(train: &mut Tensor, test: &mut Tensor) {
    let mean = train.mean_axis(Axis(0)).unwrap();
    *train -= &mean;
    *test -= &mean;
    let std = (train.iter().map(|v| v * v).sum::<f64>() / train.len() as f64)
        .sqrt()
        .max(1e-12);
    *train /= std;
    *test /= std;
}

/// Subtracts per-channel means and divides by per-channel standard deviations (training split).
pub fn normalise_per_channel(train: &mut Tensor, test: &mut Tensor) {
    let c = train.shape()[1];
    for ch in 0..c {
        let plane = train.index_axis(Axis(1), ch);
        let mean = plane.mean().unwrap_or(0.0);
        let std = (plane.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / plane.len() as f64)
            .sqrt()
            .max(1e-12);
        for t in [&mut *train, &mut *test] {
            t.index_axis_mut(Axis(1), ch)
                .mapv_inplace(|v| (v - mean) / std);
        }
    }
}
