//! Files given to resprop that are not what they seem, one test per class the second outside
//! audit found: inputs that are FIFOs or endless devices (a read would block or never end),
//! outputs that would replace the data set being read, outputs derived from a device's name,
//! names too long for a temporary beside them, cells copied from another cell, a CIFAR-10
//! folder with a batch missing, and messages that did not name the file or the flag.

use crate::common::*;

/// A small CIFAR-10 folder `cifar`: `batches` training files of two records and the test
/// file; returns `cifar10:<folder>`, the `--data` value.
fn tiny_cifar(w: &Work, batches: &[usize]) -> String {
    let record = |label: u8| {
        let mut r = vec![label];
        r.extend((0..3072).map(|j| (j % 251) as u8));
        r
    };
    for b in batches {
        w.write(
            format!("cifar/data_batch_{b}.bin"),
            [record(1), record(2)].concat(),
        );
    }
    w.write("cifar/test_batch.bin", [record(3), record(4)].concat());
    format!("cifar10:{}", w.arg("cifar"))
}

#[cfg(unix)]
#[test]
fn inputs_that_are_fifos_or_devices_are_refused_without_blocking() {
    let w = Work::new();
    let fifo = w.path("fifo");
    mkfifo(&fifo);
    // Each of these blocked in open (or read /dev/zero until memory ran out) before.
    Argv::tiny("profile")
        .path("--weights", &fifo)
        .refused("not a regular file");
    Argv::new("run").arg(&fifo).refused("not a regular file");
    let zero = w.path("zlink");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    Argv::new("run").arg(&zero).refused("not a regular file");

    // plot: the CSV, and the spec.toml beside it.
    let csv = w.tiny_results();
    let spec_toml = w.path("res/tiny/spec.toml");
    std::fs::rename(&spec_toml, w.path("spec.saved")).unwrap();
    mkfifo(&spec_toml);
    let plot = w.cmd("plot", &csv, "p");
    plot.refused("not a regular file");
    std::fs::remove_file(&spec_toml).unwrap();
    std::fs::rename(w.path("spec.saved"), &spec_toml).unwrap();
    std::fs::rename(&csv, w.path("csv.saved")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &csv).unwrap();
    plot.refused("not a regular file");

    // A cell table replaced by a FIFO: refused by merge and by run (not read, not written
    // into: both would wait for the other end).
    std::fs::remove_file(&csv).unwrap();
    let store = w.path("res/cells");
    let table = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".profile.csv"))
        .unwrap();
    std::fs::remove_file(&table).unwrap();
    mkfifo(&table);
    w.cmd("merge", "tiny.toml", "res")
        .refused("not a regular file");
    let o = w.cmd("run", "tiny.toml", "res").run();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("not the file resprop keeps"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_cell_copied_from_another_is_not_taken_for_it() {
    let w = Work::new();
    w.tiny_results();
    let before = w.bytes("res/tiny/profile.csv");
    let store = w.path("res/cells");
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
    w.cmd("merge", "tiny.toml", "res")
        .refused("another cell's inputs");
    let o = w.cmd("run", "tiny.toml", "res").ok();
    assert!(stdout(&o).contains("(1 computed now)"), "{}", stdout(&o));
    assert_eq!(w.bytes("res/tiny/profile.csv"), before);
}

#[test]
fn no_output_replaces_a_file_of_the_data_set() {
    let w = Work::new();
    let data = tiny_cifar(&w, &[1, 2]);
    Argv::new("data")
        .flag("--data", &data)
        .flag("--npz", w.arg("cifar/test_batch.bin"))
        .refused("the file --data reads");
    Argv::new("profile --net resnet:1:basic --batch 2")
        .flag("--data", &data)
        .flag("--csv", w.arg("cifar/data_batch_1.bin"))
        .refused("the file --data reads");
    let bytes = w.bytes("cifar/data_batch_1.bin");
    assert_eq!(bytes.len(), 2 * 3073, "the data set is untouched");
}

#[test]
fn a_cifar_folder_with_a_batch_missing_is_refused() {
    let w = Work::new();
    let data = tiny_cifar(&w, &[1, 2, 4, 5]);
    Argv::new("data")
        .flag("--data", &data)
        .flag("--npz", w.arg("c.npz"))
        .refused("has data_batch_4.bin but not data_batch_3.bin");
    // In an experiment file, the message names the experiment and the key.
    w.write(
        "t.toml",
        format!(
            "name = \"cf\"\nclaim = \"c\"\nseed = 1\nbatch = 2\ncharts = []\ntask = \"train\"\n\n[train]\nepochs = 1\ndata = \"cifar10:{}\"\n\n[grid]\nnets = [\"resnet:1:basic\"]\nplacements = [\"full-preact\"]\nshortcuts = [\"identity\"]\nreplicates = [0]\n",
            w.arg("cifar")
        ),
    );
    w.cmd("run", "t.toml", "r").refused("cf: train.data");
}

#[cfg(unix)]
#[test]
fn no_file_is_made_beside_a_device() {
    let w = Work::new();
    let fifo = w.path("fifo");
    mkfifo(&fifo);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    let o = Argv::tiny_train()
        .path("--csv", &fifo)
        .set("--record-every", 1)
        .ok();
    assert!(reader.join().unwrap().starts_with("step,"));
    assert!(stderr(&o).contains("--grad-csv"), "{}", stderr(&o));
    let names = w.entries();
    assert_eq!(names.len(), 1, "only the FIFO: {names:?}");
}

#[test]
fn a_long_legal_name_is_written_and_an_illegal_one_says_why() {
    let w = Work::new();
    // 254 bytes: a legal name, whose temporary needs a shorter name of its own.
    let long = format!("{}.csv", "b".repeat(250));
    Argv::tiny("profile").flag("--csv", w.arg(&long)).ok();
    assert!(w.read(&long).starts_with("unit,"));
    assert_eq!(w.entries().len(), 1);
    Argv::tiny("profile")
        .flag("--csv", w.arg(format!("{}.csv", "a".repeat(256))))
        .refused("File name too long");
}

#[test]
fn experiment_runs_refuse_what_cannot_apply() {
    let w = Work::new();
    let spec = w.write("tiny.toml", TINY_SPEC);
    Argv::new("run")
        .arg(&spec)
        .flag("--shard", "0/2")
        .flag("--out", w.arg("r"))
        .flag("--plots", w.arg("p"))
        .refused("--plots: a shard");
    // A name too long to make its charts' file names is refused before any cell runs.
    w.write(
        "long.toml",
        TINY_SPEC.replace(
            "name = \"tiny\"",
            &format!("name = \"{}\"", "a".repeat(201)),
        ),
    );
    w.cmd("run", "long.toml", "r").refused("more than the 200");
    w.mkdir("exps");
    w.write("exps/a.toml", TINY_SPEC);
    w.write("exps/b.toml", TINY_SPEC);
    Argv::new("all")
        .flag("--experiments", w.arg("exps"))
        .flag("--results", w.arg("r"))
        .flag("--plots", w.arg("p"))
        .refused("are both named 'tiny'");
    assert!(!w.exists("r"));
}
