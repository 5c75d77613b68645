//! Parameters, log lines and metrics: merge and flattening, dense sequence numbers under
//! concurrent writers (threads and processes), durability across processes, torn lines.

use serde_json::json;

use ml_dash::Store;

use crate::util::*;

#[test]
fn parameters_flatten_and_merge() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    assert!(exp.parameters().get().unwrap().is_none());
    exp.parameters()
        .set(&json!({"model": {"architecture": "resnet50", "pretrained": true}, "lr": 0.1}))
        .unwrap();
    let p = exp
        .parameters()
        .set(&json!({"lr": 0.01, "training": {"epochs": 100}}))
        .unwrap();
    assert_eq!(p.version, 2);
    assert_eq!(p.data["model.architecture"], "resnet50");
    assert_eq!(p.data["model.pretrained"], true);
    assert_eq!(p.data["lr"], 0.01, "a later set wins");
    assert_eq!(p.data["training.epochs"], 100);
    assert!(exp.parameters().set(&json!([1, 2])).is_err());
    assert!(exp.parameters().set(&json!("x")).is_err());
    // Another process sees the same.
    let r = run(
        &root,
        &["params", "--project", "p", "--experiment", "e", "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(ok(&r).trim()).unwrap();
    assert_eq!(v["version"], 2);
    assert_eq!(v["data"]["model.architecture"], "resnet50");
    assert_eq!(v["data"]["lr"], 0.01);
}

#[test]
fn logs_and_metrics_are_ordered_and_durable() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    let l1 = exp.log("Starting training").unwrap();
    let l2 = exp
        .log_with("warn", "lr is high", Some(json!({"lr": 1.0})))
        .unwrap();
    assert_eq!((l1.sequence_number, l2.sequence_number), (1, 2));
    assert_eq!(l2.level, "warn");
    assert!(is_iso_utc(&l1.timestamp));
    assert!(exp.log_with("loud", "x", None).is_err());
    for epoch in 0..5 {
        let p = exp
            .metric("train_loss")
            .append(&json!({"value": 1.0 / (epoch + 1) as f64, "epoch": epoch}))
            .unwrap();
        assert_eq!(p.index, epoch);
    }
    exp.metric("val_accuracy")
        .append(&json!({"value": 0.9, "epoch": 0}))
        .unwrap();
    assert!(exp.metric("bad/name").append(&json!({"value": 1})).is_err());
    assert!(exp.metric("m").append(&json!(3)).is_err());
    let pts = exp.metric("train_loss").points().unwrap();
    assert_eq!(pts.len(), 5);
    assert_eq!(pts[4].data["epoch"], 4);
    assert!(pts[4].data["_ts"].is_f64());

    let r = run(
        &root,
        &["logs", "--project", "p", "--experiment", "e", "--json"],
    );
    let lines = json_lines(ok(&r));
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["message"], "lr is high");
    assert_eq!(lines[1]["metadata"]["lr"], 1.0);
    let r = run(
        &root,
        &["metrics", "--project", "p", "--experiment", "e", "--json"],
    );
    let lines = json_lines(ok(&r));
    assert_eq!(lines.len(), 6);
    assert_eq!(
        lines.iter().filter(|l| l["name"] == "train_loss").count(),
        5
    );
    let r = run(
        &root,
        &[
            "metrics",
            "--project",
            "p",
            "--experiment",
            "e",
            "--name",
            "val_accuracy",
        ],
    );
    assert!(ok(&r).contains("val_accuracy[0] value=0.9"), "{}", r.1);
    // Experiments are separate.
    assert!(experiment(&root, "p", "other").logs().unwrap().is_empty());
}

#[test]
fn concurrent_writers_get_dense_unique_sequence_numbers() {
    let dir = tmp();
    let root = dir.path().join("store");
    experiment(&root, "p", "e").log("first").unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "journal::child_logger",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("ML_DASH_CHILD_LOGGER", &root)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::scope(|s| {
        for t in 0..3 {
            let root = &root;
            s.spawn(move || {
                let exp = experiment(root, "p", "e");
                for k in 0..20 {
                    exp.log(format!("thread {t} line {k}")).unwrap();
                }
            });
        }
    });
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let logs = experiment(&root, "p", "e").logs().unwrap();
    assert_eq!(logs.len(), 1 + 60 + 2 * 20);
    let seqs: Vec<u64> = logs.iter().map(|l| l.sequence_number).collect();
    assert_eq!(
        seqs,
        (1..=logs.len() as u64).collect::<Vec<_>>(),
        "dense and in file order"
    );
}

/// Child mode for the test above: 20 log lines from another process.
#[test]
fn child_logger() {
    let Some(root) = std::env::var_os("ML_DASH_CHILD_LOGGER") else {
        return;
    };
    let exp = experiment(std::path::Path::new(&root), "p", "e");
    for k in 0..20 {
        exp.log(format!("process {} line {k}", std::process::id()))
            .unwrap();
    }
}

#[test]
fn a_torn_line_is_skipped_and_harmless() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    exp.log("before").unwrap();
    let journal = files_with_ext(&root.join("journals"), "jsonl")
        .pop()
        .unwrap();
    // A crashed append: half a line, no newline.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    std::io::Write::write_all(&mut f, b"0123456789abcdef {\"namespace\":\"local\",\"proj").unwrap();
    drop(f);
    // Another process reads around it; verify calls it harmless.
    let r = run(
        &root,
        &["logs", "--project", "p", "--experiment", "e", "--json"],
    );
    assert_eq!(json_lines(ok(&r)).len(), 1);
    let rep = Store::open(&root).unwrap().verify().unwrap();
    assert!(rep.ok, "{:?}", rep.problems);
    // The next append (from a fresh process) ends the torn line; nothing is lost after it.
    let r = run(&root, &["params", "--project", "p", "--experiment", "e"]);
    ok(&r);
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "journal::child_logger", "--nocapture"])
        .env("ML_DASH_CHILD_LOGGER", &root)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(child.success());
    let logs = experiment(&root, "p", "e").logs().unwrap();
    assert_eq!(logs.len(), 21);
    assert_eq!(logs.last().unwrap().sequence_number, 21);
    let rep = Store::open(&root).unwrap().verify().unwrap();
    assert!(rep.ok, "{:?}", rep.problems);
    assert!(
        rep.notes.iter().any(|n| n.contains("torn")),
        "{:?}",
        rep.notes
    );

    // Damage inside a complete line is reported.
    let text = std::fs::read(&journal).unwrap();
    let pos = text.iter().position(|&b| b == b'{').unwrap() + 5;
    flip_byte(&journal, pos as u64);
    let rep = Store::open(&root).unwrap().verify().unwrap();
    assert!(!rep.ok);
    assert!(
        rep.problems
            .iter()
            .any(|p| p.contains("journal of local/p/e")),
        "{:?}",
        rep.problems
    );
}

/// The per-process journal cache must not serve a deleted store's lines to a new store
/// created at the same path.
#[test]
fn a_store_recreated_at_the_same_path_starts_a_fresh_journal() {
    let t = tmp();
    let root = t.path().join("s");
    let key = ml_dash::ExperimentKey::new("local", "p", "e").unwrap();
    {
        let s = ml_dash::Store::open(&root).unwrap();
        for i in 0..5 {
            s.log(&key, "info", &format!("old {i}"), None).unwrap();
        }
        assert_eq!(s.journal(&key).unwrap().logs.len(), 5);
    }
    std::fs::remove_dir_all(&root).unwrap();
    let s = ml_dash::Store::open(&root).unwrap();
    assert!(s.journal(&key).unwrap().logs.is_empty());
    let e = s.log(&key, "info", "new", None).unwrap();
    assert_eq!(e.sequence_number, 1);
    assert_eq!(s.journal(&key).unwrap().logs.len(), 1);
}
