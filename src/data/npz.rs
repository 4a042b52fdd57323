//! A user's own arrays, from NumPy's `np.savez` (`--data npz:FILE`): `x` holds the samples,
//! `N x C x H x W` images or `N x D` vectors (float64, float32 or uint8), `y` their labels
//! (`N` integers from 0; the classes are `max(y) + 1`). `x_test` and `y_test`, when present,
//! are the test split; otherwise a fifth of the samples, drawn with a fixed seed, is held out.
//! Each channel (each feature of vectors) is standardised with the training split's mean and
//! standard deviation, as for the other data sets.

use std::fs::File;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use ndarray::{ArrayD, Axis, IxDyn};
use ndarray_npy::{NpzReader, ReadNpyError, ReadNpzError};
use rand::seq::SliceRandom;

use super::{normalise_per_channel, Dataset, Split};
use crate::rng::{derive_seed, rng};
use crate::tensor::Tensor;

/// Bytes the file may hold: a bound on what a path typo can make resprop read.
const MAX_FILE_BYTES: u64 = 8 << 30;
/// Values `x` may hold (4 GB in f64).
const MAX_VALUES: usize = 1 << 29;
/// Classes at most: a label of 10^9 is a mistake, not a class.
pub const MAX_CLASSES: usize = 100_000;
/// The held-out split when the file has no `x_test`: one sample in this many.
const TEST_FRACTION: usize = 5;
/// The held-out split never changes with the run's seed.
const SPLIT_SEED: u64 = 20_161_008;

/// What the error names: the file and the array.
fn ctx(path: &Path, name: &str, what: &str) -> anyhow::Error {
    anyhow!("npz:{}: array '{name}' {what}", path.display())
}

/// Whether the archive has `name` (NumPy stores it as `name.npy`).
fn has(npz: &mut NpzReader<File>, path: &Path, name: &str) -> Result<bool> {
    let names = npz
        .names()
        .map_err(|e| anyhow!("npz:{}: not a readable .npz archive ({e})", path.display()))?;
    Ok(names
        .iter()
        .any(|n| n == name || n.strip_suffix(".npy") == Some(name)))
}

/// Reads `name` as f64 from any of the element types NumPy users save samples in.
fn read_samples(npz: &mut NpzReader<File>, path: &Path, name: &str) -> Result<ArrayD<f64>> {
    let err = |e: ReadNpzError| match e {
        ReadNpzError::Npy(ReadNpyError::WrongDescriptor(_)) => None,
        e => Some(ctx(path, name, &format!("cannot be read ({e})"))),
    };
    match npz.by_name::<ndarray::OwnedRepr<f64>, IxDyn>(name) {
        Ok(a) => return Ok(a),
        Err(e) => err(e).map_or(Ok(()), Err)?,
    }
    match npz.by_name::<ndarray::OwnedRepr<f32>, IxDyn>(name) {
        Ok(a) => return Ok(a.mapv(f64::from)),
        Err(e) => err(e).map_or(Ok(()), Err)?,
    }
    match npz.by_name::<ndarray::OwnedRepr<u8>, IxDyn>(name) {
        Ok(a) => return Ok(a.mapv(f64::from)),
        Err(e) => err(e).map_or(Ok(()), Err)?,
    }
    Err(ctx(path, name, "is not float64, float32 or uint8"))
}

/// Reads `name` as labels from any integer type.
fn read_labels(npz: &mut NpzReader<File>, path: &Path, name: &str) -> Result<Vec<i64>> {
    macro_rules! try_type {
        ($t:ty) => {
            match npz.by_name::<ndarray::OwnedRepr<$t>, IxDyn>(name) {
                Ok(a) => return shape_labels(a.mapv(|v| v as i64), path, name),
                Err(ReadNpzError::Npy(ReadNpyError::WrongDescriptor(_))) => {}
                Err(e) => return Err(ctx(path, name, &format!("cannot be read ({e})"))),
            }
        };
    }
    try_type!(i64);
    try_type!(i32);
    try_type!(u8);
    try_type!(i16);
    try_type!(u16);
    try_type!(i8);
    try_type!(u32);
    // u64 above i64::MAX becomes negative and is refused as such below.
    try_type!(u64);
    Err(ctx(
        path,
        name,
        "is not an integer array (labels are whole numbers from 0)",
    ))
}

fn shape_labels(a: ArrayD<i64>, path: &Path, name: &str) -> Result<Vec<i64>> {
    if a.ndim() != 1 {
        return Err(ctx(
            path,
            name,
            &format!("has shape {:?}; labels are one dimension, N", a.shape()),
        ));
    }
    Ok(a.into_iter().collect())
}

/// Samples as `(N, C, H, W)`: images as they are, vectors `(N, D)` as `(N, D, 1, 1)`.
fn as_images(x: ArrayD<f64>, path: &Path, name: &str) -> Result<Tensor> {
    let s = x.shape().to_vec();
    let shape = match s.as_slice() {
        [n, c, h, w] => [*n, *c, *h, *w],
        [n, d] => [*n, *d, 1, 1],
        _ => {
            return Err(ctx(
                path,
                name,
                &format!("has shape {s:?}; samples are N x C x H x W images or N x D vectors"),
            ))
        }
    };
    if shape.contains(&0) {
        return Err(ctx(
            path,
            name,
            &format!("has shape {s:?}, with no sample or an empty size"),
        ));
    }
    if x.len() > MAX_VALUES {
        return Err(ctx(
            path,
            name,
            &format!("holds {} values, more than {MAX_VALUES}", x.len()),
        ));
    }
    if let Some(v) = x.iter().find(|v| !v.is_finite()) {
        return Err(ctx(
            path,
            name,
            &format!("holds {v}: samples must be finite"),
        ));
    }
    Ok(x.into_shape_with_order(IxDyn(&shape)).unwrap())
}

/// One split from the archive.
fn read_split(
    npz: &mut NpzReader<File>,
    path: &Path,
    x: &str,
    y: &str,
) -> Result<(Tensor, Vec<i64>)> {
    let samples = as_images(read_samples(npz, path, x)?, path, x)?;
    let labels = read_labels(npz, path, y)?;
    if labels.len() != samples.shape()[0] {
        bail!(
            "npz:{}: '{y}' has {} labels for the {} samples of '{x}'",
            path.display(),
            labels.len(),
            samples.shape()[0]
        );
    }
    Ok((samples, labels))
}

/// Loads the archive at `path`.
pub fn load(path: &Path) -> Result<Split> {
    let (file, len) = crate::input::open(path, "npz data")?;
    if len > MAX_FILE_BYTES {
        bail!(
            "npz:{}: {len} bytes, more than the {MAX_FILE_BYTES} resprop reads",
            path.display()
        );
    }
    let mut npz = NpzReader::new(file)
        .map_err(|e| anyhow!("npz:{}: not a readable .npz archive ({e})", path.display()))?;
    for required in ["x", "y"] {
        if !has(&mut npz, path, required)? {
            bail!(
                "npz:{}: no array '{required}' (expected x: N x C x H x W or N x D samples, y: N labels; optionally x_test, y_test)",
                path.display()
            );
        }
    }
    let (x, y) = read_split(&mut npz, path, "x", "y")?;
    let (has_x_test, has_y_test) = (
        has(&mut npz, path, "x_test")?,
        has(&mut npz, path, "y_test")?,
    );
    let ((mut train_x, train_y), (mut test_x, test_y)) = match (has_x_test, has_y_test) {
        (true, true) => {
            let test = read_split(&mut npz, path, "x_test", "y_test")?;
            if test.0.shape()[1..] != x.shape()[1..] {
                bail!(
                    "npz:{}: 'x_test' samples are {:?}, 'x' samples {:?}",
                    path.display(),
                    &test.0.shape()[1..],
                    &x.shape()[1..]
                );
            }
            ((x, y), test)
        }
        (false, false) => hold_out(x, y, path)?,
        _ => bail!(
            "npz:{}: give both x_test and y_test, or neither (a fifth of x is then held out)",
            path.display()
        ),
    };
    let classes = classes(&train_y, &test_y, path)?;
    normalise_per_channel(&mut train_x, &mut test_x);
    let to_usize = |l: Vec<i64>| l.into_iter().map(|v| v as usize).collect();
    Ok(Split {
        name: format!(
            "npz:{}",
            path.file_name().map_or(path.display().to_string(), |f| f
                .to_string_lossy()
                .into_owned())
        ),
        train: Dataset {
            images: train_x,
            labels: to_usize(train_y),
        },
        test: Dataset {
            images: test_x,
            labels: to_usize(test_y),
        },
        classes,
        augment: false,
    })
}

/// The classes, `max(label) + 1`, with every label checked.
fn classes(train: &[i64], test: &[i64], path: &Path) -> Result<usize> {
    if let Some(&bad) = train
        .iter()
        .chain(test)
        .find(|&&l| l < 0 || l as usize >= MAX_CLASSES)
    {
        bail!(
            "npz:{}: label {bad} (labels are whole numbers from 0 to {})",
            path.display(),
            MAX_CLASSES - 1
        );
    }
    let classes = train
        .iter()
        .chain(test)
        .max()
        .map_or(0, |&m| m as usize + 1);
    if classes < 2 {
        bail!(
            "npz:{}: every label is 0; classification needs two classes at least",
            path.display()
        );
    }
    Ok(classes)
}

type Part = (Tensor, Vec<i64>);

/// A fifth of the samples (at least one), drawn with a fixed seed, as the test split.
fn hold_out(x: Tensor, y: Vec<i64>, path: &Path) -> Result<(Part, Part)> {
    let n = y.len();
    if n < 2 {
        bail!(
            "npz:{}: one sample cannot be split into training and test data",
            path.display()
        );
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng(derive_seed(SPLIT_SEED, &[n as u64])));
    let (test, train) = order.split_at((n / TEST_FRACTION).max(1));
    let (mut test, mut train) = (test.to_vec(), train.to_vec());
    test.sort_unstable();
    train.sort_unstable();
    let pick = |idx: &[usize]| (x.select(Axis(0), idx), idx.iter().map(|&i| y[i]).collect());
    Ok((pick(&train), pick(&test)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array2, Array4};
    use ndarray_npy::NpzWriter;

    fn write(path: &Path, f: impl FnOnce(&mut NpzWriter<File>)) {
        let mut npz = NpzWriter::new(File::create(path).unwrap());
        f(&mut npz);
        npz.finish().unwrap();
    }

    #[test]
    fn images_with_a_test_split_and_vectors_with_a_held_out_fifth() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npz");
        write(&p, |z| {
            let x = Array4::from_shape_fn((6, 2, 3, 3), |(n, c, h, w)| (n * 7 + c + h * w) as u8);
            z.add_array("x", &x).unwrap();
            z.add_array("y", &Array1::from(vec![0i64, 1, 2, 0, 1, 2]))
                .unwrap();
            z.add_array(
                "x_test",
                &x.slice(ndarray::s![..2, .., .., ..]).mapv(f32::from),
            )
            .unwrap();
            z.add_array("y_test", &Array1::from(vec![4u8, 1])).unwrap();
        });
        let s = load(&p).unwrap();
        assert_eq!((s.train.len(), s.test.len(), s.classes), (6, 2, 5));
        assert_eq!(s.train.image_shape(), [2, 3, 3]);
        assert_eq!(s.test.labels, [4, 1]);
        // Standardised per channel with the training split's statistics.
        for c in 0..2 {
            let m = s.train.images.index_axis(Axis(1), c).mean().unwrap();
            assert!(m.abs() < 1e-12, "{m}");
        }
        let q = dir.path().join("b.npz");
        write(&q, |z| {
            z.add_array(
                "x",
                &Array2::from_shape_fn((11, 4), |(i, j)| (i * j) as f64),
            )
            .unwrap();
            z.add_array("y", &Array1::from_iter((0..11i32).map(|i| i % 3)))
                .unwrap();
        });
        let s = load(&q).unwrap();
        assert_eq!((s.train.len(), s.test.len(), s.classes), (9, 2, 3));
        assert_eq!(s.train.image_shape(), [4, 1, 1]);
        // The same split every time.
        assert_eq!(load(&q).unwrap().fingerprint(), s.fingerprint());
    }

    #[test]
    fn bad_arrays_name_the_array() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npz");
        type Writes = Box<dyn Fn(&mut NpzWriter<File>)>;
        let cases: Vec<(Writes, &str)> = vec![
            (
                Box::new(|z| z.add_array("x", &Array2::<f64>::zeros((3, 2))).unwrap()),
                "no array 'y'",
            ),
            (
                Box::new(|z| {
                    z.add_array("x", &Array2::<f64>::zeros((3, 2))).unwrap();
                    z.add_array("y", &Array1::from(vec![0i64, 1])).unwrap();
                }),
                "2 labels for the 3 samples",
            ),
            (
                Box::new(|z| {
                    z.add_array("x", &Array2::<f64>::zeros((3, 2))).unwrap();
                    z.add_array("y", &Array1::from(vec![0.5f64, 1.0, 0.0]))
                        .unwrap();
                }),
                "array 'y' is not an integer array",
            ),
            (
                Box::new(|z| {
                    z.add_array("x", &Array2::<f64>::zeros((3, 2))).unwrap();
                    z.add_array("y", &Array1::from(vec![0i64, -1, 0])).unwrap();
                }),
                "label -1",
            ),
            (
                Box::new(|z| {
                    z.add_array("x", &Array1::<f64>::zeros(3)).unwrap();
                    z.add_array("y", &Array1::from(vec![0i64, 1, 0])).unwrap();
                }),
                "array 'x' has shape [3]",
            ),
            (
                Box::new(|z| {
                    z.add_array("x", &Array2::from_elem((3, 2), f64::NAN))
                        .unwrap();
                    z.add_array("y", &Array1::from(vec![0i64, 1, 0])).unwrap();
                }),
                "holds NaN",
            ),
            (
                Box::new(|z| {
                    z.add_array("x", &Array2::<f64>::zeros((3, 2))).unwrap();
                    z.add_array("y", &Array1::from(vec![0i64, 1, 0])).unwrap();
                    z.add_array("x_test", &Array2::<f64>::zeros((3, 2)))
                        .unwrap();
                }),
                "give both x_test and y_test",
            ),
            (
                Box::new(|z| {
                    z.add_array("x", &Array2::<f64>::zeros((3, 2))).unwrap();
                    z.add_array("y", &Array1::from(vec![0i64, 0, 0])).unwrap();
                }),
                "two classes",
            ),
        ];
        for (f, want) in cases {
            write(&p, |z| f(z));
            let e = format!("{:#}", load(&p).unwrap_err());
            assert!(e.contains(want) && e.starts_with("npz:"), "{want}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        std::fs::write(&p, b"not a zip").unwrap();
        let e = format!("{:#}", load(&p).unwrap_err());
        assert!(e.contains("not a readable .npz archive"), "{e}");
    }
}
