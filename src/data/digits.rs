//! The bundled UCI handwritten digits (see data/README.md): 1,797 8x8 images, 10 classes.

use anyhow::{bail, Context, Result};
use flate2::read::GzDecoder;
use ndarray::IxDyn;
use rand::seq::SliceRandom;
use std::io::Read;

use super::{normalise_per_pixel, Dataset, Split};
use crate::rng::{derive_seed, rng};
use crate::tensor::Tensor;

static DIGITS_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");

/// Images held out for testing.
pub const TEST_SIZE: usize = 360;
/// The split never changes: a fixed seed, independent of the run's seed.
const SPLIT_SEED: u64 = 20_160_316;

/// Parses the CSV text: 64 pixel values in 0..=16 then a label in 0..=9 per row.
pub fn parse(text: &str) -> Result<(Vec<f64>, Vec<usize>)> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 65 {
            bail!(
                "digits: line {}: {} fields, expected 65",
                i + 1,
                fields.len()
            );
        }
        for f in &fields[..64] {
            let v: f64 = f
                .trim()
                .parse()
                .with_context(|| format!("digits: line {}: pixel '{f}' is not a number", i + 1))?;
            if !(0.0..=16.0).contains(&v) {
                bail!("digits: line {}: pixel {v} is outside 0..=16", i + 1);
            }
            pixels.push(v);
        }
        let label: usize = fields[64].trim().parse().with_context(|| {
            format!(
                "digits: line {}: label '{}' is not a class",
                i + 1,
                fields[64]
            )
        })?;
        if label > 9 {
            bail!("digits: line {}: label {label} is outside 0..=9", i + 1);
        }
        labels.push(label);
    }
    Ok((pixels, labels))
}

/// The bundled set, split and normalised.
pub fn load() -> Result<Split> {
    let mut text = String::new();
    GzDecoder::new(DIGITS_GZ)
        .read_to_string(&mut text)
        .context("digits: corrupt bundled file")?;
    let (pixels, labels) = parse(&text)?;
    let n = labels.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng(derive_seed(SPLIT_SEED, &[])));
    let (test_idx, train_idx) = order.split_at(TEST_SIZE);
    let pick = |idx: &[usize]| -> (Tensor, Vec<usize>) {
        let mut data = Vec::with_capacity(idx.len() * 64);
        for &i in idx {
            data.extend_from_slice(&pixels[i * 64..(i + 1) * 64]);
        }
        (
            Tensor::from_shape_vec(IxDyn(&[idx.len(), 1, 8, 8]), data).unwrap(),
            idx.iter().map(|&i| labels[i]).collect(),
        )
    };
    let (mut train_x, train_y) = pick(train_idx);
    let (mut test_x, test_y) = pick(test_idx);
    normalise_per_pixel(&mut train_x, &mut test_x);
    Ok(Split {
        name: "digits".into(),
        train: Dataset {
            images: train_x,
            labels: train_y,
        },
        test: Dataset {
            images: test_x,
            labels: test_y,
        },
        classes: 10,
        augment: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_digits_load_and_split() {
        let s = load().unwrap();
        assert_eq!(s.train.len() + s.test.len(), 1797);
        assert_eq!(s.test.len(), TEST_SIZE);
        assert_eq!(s.train.image_shape(), [1, 8, 8]);
        for c in 0..10 {
            assert!(
                s.train.labels.iter().filter(|&&l| l == c).count() > 100,
                "class {c} underrepresented"
            );
        }
        // Normalised with training statistics: per-pixel mean 0 on the training split.
        let mean = s.train.images.mean_axis(ndarray::Axis(0)).unwrap();
        assert!(mean.iter().all(|m| m.abs() < 1e-12));
        assert!(s.train.images.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn bad_rows_are_reported() {
        assert!(parse("1,2,3").unwrap_err().to_string().contains("65"));
        let row = |label: &str| format!("{}{label}", "0,".repeat(64));
        assert!(parse(&row("12"))
            .unwrap_err()
            .to_string()
            .contains("label 12"));
        assert!(parse(&row("x")).unwrap_err().to_string().contains("'x'"));
        assert_eq!(parse(&row("3")).unwrap().1, vec![3]);
    }
}
