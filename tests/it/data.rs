//! The data sets of `--data` end to end: MNIST-format folders (raw and gzip IDX files) and a
//! user's `.npz`, through `data`, `train` (with `--train-subset`) and `profile`.

use std::io::Write;

use ndarray::{Array1, Array2};
use ndarray_npy::NpzWriter;

use crate::common::{stdout, Argv, Work};

/// An IDX file of unsigned bytes.
fn idx(sizes: &[u32], values: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, sizes.len() as u8];
    for s in sizes {
        b.extend(s.to_be_bytes());
    }
    b.extend(values);
    b
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// An MNIST-format folder of `n` training and `n / 2` test images, 28x28, labels cycling
/// through the ten classes; the training images gzip-compressed as Debian ships them.
fn mnist_folder(w: &Work, name: &str, n: u32) -> String {
    w.mkdir(name);
    let pixels =
        |count: u32| -> Vec<u8> { (0..count * 784).map(|i| (i * 31 % 251) as u8).collect() };
    let labels = |count: u32| -> Vec<u8> { (0..count).map(|i| (i % 10) as u8).collect() };
    w.write(
        format!("{name}/train-images-idx3-ubyte.gz"),
        gzip(&idx(&[n, 28, 28], &pixels(n))),
    );
    w.write(
        format!("{name}/train-labels-idx1-ubyte"),
        idx(&[n], &labels(n)),
    );
    w.write(
        format!("{name}/t10k-images-idx3-ubyte"),
        idx(&[n / 2, 28, 28], &pixels(n / 2)),
    );
    w.write(
        format!("{name}/t10k-labels-idx1-ubyte"),
        idx(&[n / 2], &labels(n / 2)),
    );
    w.arg(name)
}

#[test]
fn an_mnist_folder_is_described_trained_on_and_profiled_at_28x28() {
    let w = Work::new();
    let dir = mnist_folder(&w, "m", 40);
    let out = stdout(
        &Argv::new("data")
            .flag("--data", format!("mnist:{dir}"))
            .ok(),
    );
    assert!(
        out.contains("40 training and 20 test samples, 1x28x28 images, 10 classes"),
        "{out}"
    );
    // The same folder as Fashion-MNIST's: the same images, another name.
    let out = stdout(
        &Argv::new("data")
            .flag("--data", format!("fashion-mnist:{dir}"))
            .ok(),
    );
    assert!(out.starts_with("fashion-mnist:"), "{out}");
    // The CIFAR ResNets take one channel at 28x28, without resizing.
    let out = stdout(
        &Argv::new("profile --net resnet:1:basic --batch 4")
            .flag("--data", format!("mnist:{dir}"))
            .ok(),
    );
    assert!(
        out.contains("feature maps (C x H x W): 16x28x28 (x_0..x_1), 32x14x14 (x_2), 64x7x7 (x_3)"),
        "{out}"
    );
    // A subset of 20 training images: two full batches of 8 per epoch (the rest is left
    // for the next epoch's shuffle, as for the whole split).
    Argv::new("train --net mlp --units 2 --width 8 --epochs 1 --batch 8 --record-every 0")
        .flag("--data", format!("mnist:{dir}"))
        .flag("--train-subset", 20)
        .path("--csv", w.path("t.csv"))
        .ok();
    let csv = w.read("t.csv");
    assert_eq!(csv.lines().count(), 1 + 2, "{csv}");
    Argv::new("train --net mlp --units 2 --width 8 --epochs 1")
        .flag("--data", format!("mnist:{dir}"))
        .flag("--train-subset", 41)
        .refused("--train-subset: 41 images, but the training split of mnist has 40; give 1..=40");
    Argv::new("data")
        .flag("--data", format!("mnist:{dir}"))
        .flag("--test-subset", 10)
        .ok();
}

#[test]
fn a_users_npz_is_read_with_its_classes_and_a_held_out_fifth() {
    let w = Work::new();
    let file = w.path("mine.npz");
    let mut npz = NpzWriter::new(std::fs::File::create(&file).unwrap());
    npz.add_array(
        "x",
        &Array2::from_shape_fn((50, 6), |(i, j)| ((i * 7 + j) % 13) as f32),
    )
    .unwrap();
    npz.add_array("y", &Array1::from_iter((0..50).map(|i| (i % 3) as i64)))
        .unwrap();
    npz.finish().unwrap();
    let spec = format!("npz:{}", file.display());
    let out = stdout(&Argv::new("data").flag("--data", &spec).ok());
    assert!(
        out.contains("40 training and 10 test samples, vectors of 6, 3 classes"),
        "{out}"
    );
    Argv::new("train --net mlp --units 2 --width 8 --epochs 1 --batch 8 --record-every 0")
        .flag("--data", &spec)
        .path("--csv", w.path("t.csv"))
        .ok();
    // An output never replaces the data it reads.
    Argv::new("profile --net mlp --units 2 --width 8 --batch 4")
        .flag("--data", &spec)
        .flag("--csv", file.display())
        .refused("the file --data reads");
}

#[test]
fn data_lists_every_kind_and_says_how_to_install_what_is_missing() {
    let out = stdout(&Argv::new("data").ok());
    for kind in [
        "digits",
        "fashion-mnist",
        "mnist:DIR",
        "cifar10:DIR",
        "npz:FILE",
    ] {
        assert!(out.contains(&format!("  {kind} ")), "{kind}: {out}");
    }
    let fashion = std::path::Path::new("/usr/share/datasets/fashion-mnist");
    let installed = fashion.join("train-images-idx3-ubyte.gz").exists();
    assert_eq!(
        out.contains("not installed at /usr/share/datasets/fashion-mnist: install it with `sudo apt-get install dataset-fashion-mnist`"),
        !installed,
        "{out}"
    );
}

#[test]
fn the_installed_fashion_mnist_has_its_counts_first_labels_and_pixels() {
    let dir = std::path::Path::new("/usr/share/datasets/fashion-mnist");
    if !dir.join("train-images-idx3-ubyte.gz").exists() {
        // CI installs the package and sets this, so there the test cannot pass by skipping.
        assert!(
            std::env::var_os("RESPROP_REQUIRE_FASHION_MNIST").is_none(),
            "Fashion-MNIST is not installed: sudo apt-get install dataset-fashion-mnist"
        );
        eprintln!("note: Fashion-MNIST is not installed; its test is skipped");
        return;
    }
    let data = resprop::data::load(&"fashion-mnist".parse().unwrap()).unwrap();
    assert_eq!(
        (data.train.len(), data.test.len(), data.classes),
        (60_000, 10_000, 10)
    );
    assert_eq!(data.train.image_shape(), [1, 28, 28]);
    // The labels' first bytes, as the files hold them (read with Python's gzip module).
    assert_eq!(data.train.labels[..10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]);
    assert_eq!(data.test.labels[..10], [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]);
    // Row 14 of the first training image, as the file's bytes: resprop's values are one affine
    // map (v / 255 - mean) / sd of them.
    let raw = [
        0u8, 0, 1, 4, 6, 7, 2, 0, 0, 0, 0, 0, 237, 226, 217, 223, 222, 219, 222, 221, 216, 223,
        229, 215, 218, 255, 77, 0,
    ];
    let row: Vec<f64> = (0..28).map(|x| data.train.images[[0, 0, 14, x]]).collect();
    let slope = (row[25] - row[0]) / 255.0;
    assert!(slope > 0.0);
    for (v, b) in row.iter().zip(raw) {
        assert!((v - (row[0] + slope * b as f64)).abs() < 1e-12, "{row:?}");
    }
    // Standardised with the training split's statistics.
    let mean = data.train.images.mean().unwrap();
    assert!(mean.abs() < 1e-9, "{mean}");
}

/// `--downsample` must divide the images: a wrong factor is refused in one line naming the
/// factors that do, from `train` and from `data` alike.
#[test]
fn a_downsampling_factor_that_does_not_divide_the_images_is_refused() {
    for command in ["train", "data"] {
        crate::common::refused(
            &[command, "--data", "digits", "--downsample", "3"],
            "--downsample: 3 does not divide 8x8 images into blocks; give one of 2, 4, 8",
        );
        crate::common::refused(
            &[command, "--data", "digits", "--downsample", "0"],
            "--downsample: 0 does not divide 8x8 images into blocks",
        );
    }
}
