//! Files given to resprop that are not what they seem, one test per class the second outside
//! audit found: inputs that are FIFOs or endless devices (a read would block or never end),
//! outputs that would replace the data set being read, outputs derived from a device's name,
//! names too long for a temporary beside them, cells copied from another cell, a CIFAR-10
//! folder with a batch missing, and messages that did not name the file or the flag.

use crate::common::*;

fn mkfifo(path: &std::path::Path) {
    assert!(std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap()
        .success());
}

/// A small CIFAR-10 folder: `batches` training files of two records and the test file.
fn tiny_cifar(dir: &std::path::Path, batches: &[usize]) -> std::path::PathBuf {
    let cifar = dir.join("cifar");
    std::fs::create_dir_all(&cifar).unwrap();
    let record = |label: u8| {
        let mut r = vec![label];
        r.extend((0..3072).map(|j| (j % 251) as u8));
        r
    };
    for b in batches {
        std::fs::write(
            cifar.join(format!("data_batch_{b}.bin")),
            [record(1), record(2)].concat(),
        )
        .unwrap();
    }
    std::fs::write(
        cifar.join("test_batch.bin"),
        [record(3), record(4)].concat(),
    )
    .unwrap();
    cifar
}

#[cfg(unix)]
#[test]
fn inputs_that_are_fifos_or_devices_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    // Each of these blocked in open (or read /dev/zero until memory ran out) before.
    refused(
        &with_tiny("profile", &["--weights", &s(&fifo)]),
        "not a regular file",
    );
    refused(&["run", &s(&fifo)], "not a regular file");
    let zero = d.join("zlink");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    refused(&["run", &s(&zero)], "not a regular file");

    // plot: the CSV, and the spec.toml beside it.
    let spec = d.join("tiny.toml");
    std::fs::write(&spec, TINY_SPEC).unwrap();
    ok(&resprop(&["run", &s(&spec), "--out", &s(&d.join("res"))]));
    let results = d.join("res/tiny");
    let spec_toml = results.join("spec.toml");
    std::fs::rename(&spec_toml, d.join("spec.saved")).unwrap();
    mkfifo(&spec_toml);
    let csv = results.join("profile.csv");
    refused(
        &["plot", &s(&csv), "--out", &s(&d.join("p"))],
        "not a regular file",
    );
    std::fs::remove_file(&spec_toml).unwrap();
    std::fs::rename(d.join("spec.saved"), &spec_toml).unwrap();
    std::fs::rename(&csv, d.join("csv.saved")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &csv).unwrap();
    refused(
        &["plot", &s(&csv), "--out", &s(&d.join("p"))],
        "not a regular file",
    );

    // A cell table replaced by a FIFO: refused by merge and by run (not read, not written
    // into: both would wait for the other end).
    std::fs::remove_file(&csv).unwrap();
    let store = d.join("res/cells");
    let table = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".profile.csv"))
        .unwrap();
    std::fs::remove_file(&table).unwrap();
    mkfifo(&table);
    refused(
        &["merge", &s(&spec), "--out", &s(&d.join("res"))],
        "not a regular file",
    );
    let o = resprop(&["run", &s(&spec), "--out", &s(&d.join("res"))]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("not the file resprop keeps"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_cell_copied_from_another_is_not_taken_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = d.join("tiny.toml");
    std::fs::write(&spec, TINY_SPEC).unwrap();
    let out = d.join("res");
    ok(&resprop(&["run", &s(&spec), "--out", &s(&out)]));
    let before = std::fs::read(out.join("tiny/profile.csv")).unwrap();
    let store = out.join("cells");
    let mut manifests: Vec<_> = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    manifests.sort();
    assert_eq!(manifests.len(), 2);
    // Cell B's manifest and table put in cell A's place.
    let (a, b) = (&manifests[0], &manifests[1]);
    std::fs::copy(b, a).unwrap();
    std::fs::copy(
        b.with_extension("profile.csv"),
        a.with_extension("profile.csv"),
    )
    .unwrap();
    refused(
        &["merge", &s(&spec), "--out", &s(&out)],
        "another cell's inputs",
    );
    let o = resprop(&["run", &s(&spec), "--out", &s(&out)]);
    ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("(1 computed now)"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(std::fs::read(out.join("tiny/profile.csv")).unwrap(), before);
}

#[test]
fn no_output_replaces_a_file_of_the_data_set() {
    let dir = tempfile::tempdir().unwrap();
    let cifar = tiny_cifar(dir.path(), &[1, 2]);
    let data = format!("cifar10:{}", s(&cifar));
    let test_batch = s(&cifar.join("test_batch.bin"));
    refused(
        &["data", "--data", &data, "--npz", &test_batch],
        "the file --data reads",
    );
    let batch = s(&cifar.join("data_batch_1.bin"));
    refused(
        &[
            "profile",
            "--net",
            "resnet:1:basic",
            "--batch",
            "2",
            "--data",
            &data,
            "--csv",
            &batch,
        ],
        "the file --data reads",
    );
    let bytes = std::fs::read(cifar.join("data_batch_1.bin")).unwrap();
    assert_eq!(bytes.len(), 2 * 3073, "the data set is untouched");
}

#[test]
fn a_cifar_folder_with_a_batch_missing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cifar = tiny_cifar(dir.path(), &[1, 2, 4, 5]);
    let npz = s(&dir.path().join("c.npz"));
    refused(
        &[
            "data",
            "--data",
            &format!("cifar10:{}", s(&cifar)),
            "--npz",
            &npz,
        ],
        "has data_batch_4.bin but not data_batch_3.bin",
    );
    // In an experiment file, the message names the experiment and the key.
    let spec = dir.path().join("t.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"cf\"\nclaim = \"c\"\nseed = 1\nbatch = 2\ncharts = []\ntask = \"train\"\n\n[train]\nepochs = 1\ndata = \"cifar10:{}\"\n\n[grid]\nnets = [\"resnet:1:basic\"]\nplacements = [\"full-preact\"]\nshortcuts = [\"identity\"]\nreplicates = [0]\n",
            s(&cifar)
        ),
    )
    .unwrap();
    refused(
        &["run", &s(&spec), "--out", &s(&dir.path().join("r"))],
        "cf: train.data",
    );
}

#[cfg(unix)]
#[test]
fn no_file_is_made_beside_a_device() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    let mut args = tiny_train(&["--csv", &s(&fifo)]);
    let every = args.iter().position(|a| a == "--record-every").unwrap();
    args[every + 1] = "1".into();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = resprop(&args);
    ok(&o);
    assert!(reader.join().unwrap().starts_with("step,"));
    assert!(stderr(&o).contains("--grad-csv"), "{}", stderr(&o));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names.len(), 1, "only the FIFO: {names:?}");
}

#[test]
fn a_long_legal_name_is_written_and_an_illegal_one_says_why() {
    let dir = tempfile::tempdir().unwrap();
    // 254 bytes: a legal name, whose temporary needs a shorter name of its own.
    let long = dir.path().join(format!("{}.csv", "b".repeat(250)));
    ok(&resprop(&with_tiny("profile", &["--csv", &s(&long)])));
    assert!(std::fs::read_to_string(&long).unwrap().starts_with("unit,"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let too_long = dir.path().join(format!("{}.csv", "a".repeat(256)));
    refused(
        &with_tiny("profile", &["--csv", &s(&too_long)]),
        "File name too long",
    );
}

#[test]
fn experiment_runs_refuse_what_cannot_apply() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = d.join("tiny.toml");
    std::fs::write(&spec, TINY_SPEC).unwrap();
    refused(
        &[
            "run",
            &s(&spec),
            "--shard",
            "0/2",
            "--out",
            &s(&d.join("r")),
            "--plots",
            &s(&d.join("p")),
        ],
        "--plots: a shard",
    );
    // A name too long to make its charts' file names is refused before any cell runs.
    let long = d.join("long.toml");
    std::fs::write(
        &long,
        TINY_SPEC.replace(
            "name = \"tiny\"",
            &format!("name = \"{}\"", "a".repeat(201)),
        ),
    )
    .unwrap();
    refused(
        &["run", &s(&long), "--out", &s(&d.join("r"))],
        "more than the 200",
    );
    let exps = d.join("exps");
    std::fs::create_dir(&exps).unwrap();
    std::fs::write(exps.join("a.toml"), TINY_SPEC).unwrap();
    std::fs::write(exps.join("b.toml"), TINY_SPEC).unwrap();
    refused(
        &[
            "all",
            "--experiments",
            &s(&exps),
            "--results",
            &s(&d.join("r")),
            "--plots",
            &s(&d.join("p")),
        ],
        "are both named 'tiny'",
    );
    assert!(!d.join("r").exists());
}
