//! Parameters, log lines and metrics: merge and flattening, dense sequence numbers under
//! concurrent writers (threads and processes), durability across processes, torn lines;
//! batches of lines (import, `append_many`) durable once acknowledged.

use serde_json::json;

use ml_dash::testing::{FaultKind, Faults};
use ml_dash::{Error, ExperimentKey, Store, StoreOptions};

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
    // `train/loss` (as the ml-dash client names metrics) is fine; an empty part or `..` is not.
    assert!(
        exp.metric("train/loss")
            .append(&json!({"value": 1}))
            .is_ok()
    );
    for bad in ["bad//name", "../up", "/lead", "trail/", "a/./b"] {
        assert!(
            exp.metric(bad).append(&json!({"value": 1})).is_err(),
            "{bad}"
        );
    }
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
    assert_eq!(lines.len(), 7);
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
    // A metric named with `/` is nested folders in the ml-dash layout, and comes back.
    let out = dir.path().join("tree");
    ok(&run(
        &root,
        &["export", out.to_str().unwrap(), "--layout", "ml-dash"],
    ));
    assert!(
        out.join("local/p/e/metrics/train/loss/data.jsonl")
            .is_file()
    );
    let back = dir.path().join("back");
    ok(&run(&back, &["import", out.to_str().unwrap()]));
    let r = run(
        &back,
        &["metrics", "--project", "p", "--experiment", "e", "--json"],
    );
    let names: std::collections::BTreeSet<String> = json_lines(ok(&r))
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["train/loss", "train_loss", "val_accuracy"]
    );
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

/// Journal batches: once `import_metrics` / `import_logs` return, every line is durable and
/// read back by another handle; a failed batch write or fsync is refused and poisons.
#[test]
fn journal_batches_are_durable_once_acknowledged() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = ExperimentKey::new("local", "p", "e").unwrap();
    let store = Store::open(&root).unwrap();
    let points: Vec<ml_dash::MetricPoint> = (0..20_000u64)
        .map(|i| ml_dash::MetricPoint {
            index: i,
            data: json!({"value": i as f64 / 7.0})
                .as_object()
                .unwrap()
                .clone(),
            created_at: "2025-01-01T00:00:00.000000Z".into(),
        })
        .collect();
    ml_dash::testing::import_metrics(&store, &exp, "loss", points[..15_000].to_vec()).unwrap();
    ml_dash::testing::import_metrics(&store, &exp, "loss", points[15_000..].to_vec()).unwrap();
    let logs: Vec<ml_dash::LogEntry> = (1..=500u64)
        .map(|i| ml_dash::LogEntry {
            sequence_number: i,
            timestamp: "2025-01-01T00:00:01.000000Z".into(),
            level: "info".into(),
            message: format!("line {i}"),
            metadata: None,
        })
        .collect();
    ml_dash::testing::import_logs(&store, &exp, logs.clone()).unwrap();
    // Another process.
    let r = run(
        &root,
        &["metrics", "--project", "p", "--experiment", "e", "--json"],
    );
    let got = json_lines(ok(&r));
    assert_eq!(got.len(), 20_000);
    assert_eq!(got[19_999]["index"], 19_999);
    let j = ml_dash::testing::journal_from_disk(&Store::open(&root).unwrap(), &exp).unwrap();
    assert_eq!(j.metrics["loss"], points);
    assert_eq!(j.logs, logs);
    assert_eq!((j.bad_lines, j.torn_lines), (0, 0));
    // A batch whose write or fsync fails is refused, and the store takes no more writes.
    for kind in [FaultKind::Write, FaultKind::Sync] {
        let faults = Faults::fail_nth(kind, 1);
        let s = Store::open_with(&root, StoreOptions::default().faults(faults)).unwrap();
        assert!(ml_dash::testing::import_metrics(&s, &exp, "acc", points[..10].to_vec()).is_err());
        assert!(matches!(
            ml_dash::testing::import_logs(&s, &exp, logs[..1].to_vec()),
            Err(Error::Poisoned(_))
        ));
    }
    let j = ml_dash::testing::journal_from_disk(&Store::open(&root).unwrap(), &exp).unwrap();
    assert_eq!(j.metrics["loss"].len(), 20_000);
    assert_eq!(j.bad_lines, 0);
}

/// `ml-dash import` of 0.11-style metrics and logs, in batches: everything arrives, a second
/// import adds nothing.
#[test]
fn import_of_many_points_in_batches() {
    let dir = tmp();
    let tree = dir.path().join("tree");
    let exp_dir = tree.join("local/proj/run1");
    let mut metrics = String::new();
    for i in 0..30_000 {
        let p = json!({"index": i, "data": {"value": i, "_ts": 1.0}, "createdAt": "2026-01-01T00:00:00.000000Z"});
        metrics.push_str(&format!("{p}\n"));
    }
    write_file(&exp_dir, "metrics/loss/data.jsonl", metrics.as_bytes());
    let mut logs = String::new();
    for i in 1..=9000 {
        let l = json!({"sequenceNumber": i, "timestamp": "2026-01-01T00:00:00.000000Z", "level": "info", "message": format!("m{i}")});
        logs.push_str(&format!("{l}\n"));
    }
    write_file(&exp_dir, "logs/logs.jsonl", logs.as_bytes());
    let root = dir.path().join("store");
    let r = run(&root, &["import", tree.to_str().unwrap(), "--json"]);
    let sum = &json_lines(ok(&r))[0];
    assert_eq!(
        (sum["metricPoints"].as_u64(), sum["logs"].as_u64()),
        (Some(30_000), Some(9000))
    );
    let r = run(&root, &["import", tree.to_str().unwrap(), "--json"]);
    let sum = &json_lines(ok(&r))[0];
    assert_eq!(
        (sum["metricPoints"].as_u64(), sum["logs"].as_u64()),
        (Some(0), Some(0))
    );
    let exp = ExperimentKey::new("local", "proj", "run1").unwrap();
    let j = ml_dash::testing::journal_from_disk(&Store::open(&root).unwrap(), &exp).unwrap();
    assert_eq!((j.metrics["loss"].len(), j.logs.len()), (30_000, 9000));
    assert_eq!(j.logs[8999].message, "m9000");
}

/// `Metric::append_many`: one write for many points, numbered on from the points before them,
/// durable when it returns (another process reads them).
#[test]
fn append_many_numbers_on_and_is_durable() {
    let dir = tmp();
    let root = dir.path().join("store");
    let exp = experiment(&root, "p", "e");
    exp.metric("loss").append(&json!({"value": 1.0})).unwrap();
    let many: Vec<_> = (0..1000).map(|i| json!({"value": i, "step": i})).collect();
    let points = exp.metric("loss").append_many(&many).unwrap();
    assert_eq!((points[0].index, points[999].index), (1, 1000));
    assert!(points.iter().all(|p| p.data.contains_key("_ts")));
    // A bad point refuses the whole call and writes nothing.
    let bad = vec![json!({"value": 1}), json!([1, 2])];
    assert!(exp.metric("loss").append_many(&bad).is_err());
    let r = run(
        &root,
        &["metrics", "--project", "p", "--experiment", "e", "--json"],
    );
    let got = json_lines(ok(&r));
    assert_eq!(got.len(), 1001);
    assert_eq!(got[1000]["data"]["step"], 999);
}
