//! Retention: gc with a keep-last / keep-tag / keep-within policy, given on the call or stored
//! per scope, soft-deletes exactly the versions outside it and reclaims their bytes, while
//! every kept version (deltas included) reads back byte-exact. A dropped version never comes
//! back, neither through a rebuild of the index nor through a pull.

use ml_dash::{
    Experiment, GcOptions, ListFilter, NewVersion, RecordChanges, Remote, RemoteConfig,
    RetentionPolicy, RetentionScope, Store,
};

use crate::delta::{delta_records, key, model_checkpoints, read};
use crate::util::*;

fn keep_last(n: u32) -> RetentionPolicy {
    RetentionPolicy {
        keep_last: Some(n),
        ..Default::default()
    }
}

fn everywhere() -> RetentionScope {
    RetentionScope::default()
}

fn live_versions(s: &Store, name: &str) -> Vec<u32> {
    s.list(&ListFilter {
        all_versions: true,
        ..Default::default()
    })
    .unwrap()
    .into_iter()
    .filter(|r| r.filename == name)
    .map(|r| r.version)
    .collect()
}

#[test]
fn keep_last_3_and_a_tag_over_50_checkpoint_versions_with_deltas() {
    let t = tmp();
    let s = Store::open(t.path()).unwrap();
    let ck = model_checkpoints(200_000, 5, 50, 10);
    for c in &ck {
        s.put_reader(
            &c[..],
            &key("latest.safetensors"),
            NewVersion::default(),
            None,
        )
        .unwrap();
    }
    assert!(
        delta_records(t.path()) > 0,
        "the series is stored as deltas"
    );
    let v7 = s.resolve(&key("latest.safetensors"), Some(7)).unwrap();
    s.update(v7.id, &RecordChanges::new().tags(["best"]))
        .unwrap();
    let policy = RetentionPolicy {
        keep_last: Some(3),
        keep_tags: vec!["best".into()],
        keep_within_secs: None,
    };

    // The dry run names the 46 versions that go and changes nothing.
    let before = packs_total(t.path());
    let dry = s
        .gc(&GcOptions::new()
            .dry_run(true)
            .retention(everywhere(), policy.clone()))
        .unwrap();
    let mut going: Vec<u32> = dry.retention_dropped.iter().map(|r| r.version).collect();
    going.sort_unstable();
    let want: Vec<u32> = (1..=47).filter(|v| *v != 7).collect();
    assert_eq!(going, want);
    assert_eq!(dry.deleted_versions, 46);
    assert!(dry.reclaimed_bytes > before / 2, "{dry:?} of {before}");
    assert_eq!(packs_total(t.path()), before);
    assert_eq!(live_versions(&s, "latest.safetensors").len(), 50);

    let rep = s
        .gc(&GcOptions::new()
            .rewrite_threshold(0.0)
            .retention(everywhere(), policy))
        .unwrap();
    assert_eq!(rep.retention_dropped.len(), 46);
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    assert_eq!(live_versions(&s, "latest.safetensors"), vec![7, 48, 49, 50]);
    for v in [7u32, 48, 49, 50] {
        let back = read(&s, "latest.safetensors", Some(v)).unwrap();
        assert!(back == ck[v as usize - 1], "version {v} is not byte-exact");
        assert!(
            read(&s, "latest.safetensors", Some(v - 1)).is_err() || v == 49 || v == 50,
            "version {} should be gone",
            v - 1
        );
    }
    let after = packs_total(t.path());
    assert!(
        after < before * 3 / 10,
        "46 of 50 versions went, {after} of {before} bytes stay"
    );
    assert_eq!(before - after, rep.reclaimed_bytes, "{rep:?}");
    let v = s.verify().unwrap();
    assert!(v.ok, "{v:?}");

    // The drop is durable truth: a rebuilt index does not bring them back, and a second gc
    // with the same policy has nothing to drop.
    let r = s.rebuild_index().unwrap();
    assert!(r.lost_versions.is_empty(), "{r:?}");
    assert_eq!(live_versions(&s, "latest.safetensors"), vec![7, 48, 49, 50]);
    let again = s
        .gc(&GcOptions::new().retention(everywhere(), keep_last(3)))
        .unwrap();
    assert_eq!(
        again.retention_dropped.len(),
        1,
        "keep-last 3 without the tag drops 7 now"
    );
    assert_eq!(live_versions(&s, "latest.safetensors"), vec![48, 49, 50]);
    assert!(s.verify().unwrap().ok);
}

#[test]
fn stored_policies_apply_at_every_gc_and_the_most_specific_wins() {
    let t = tmp();
    let exp = Experiment::new("run", "proj")
        .local_path(t.path())
        .keep_last(2)
        .open()
        .unwrap();
    let s = exp.store().clone();
    assert_eq!(
        s.retention_policies().unwrap()[0].policy,
        keep_last(2),
        "the experiment stored its policy"
    );
    let src = t.path().join("src");
    for i in 0..5u8 {
        std::fs::write(&src, vec![i; 3000 + usize::from(i)]).unwrap();
        exp.file(&src)
            .prefix("/ckpt")
            .to("model.pt")
            .save()
            .unwrap();
        exp.file(&src)
            .prefix("/best")
            .to("model.pt")
            .save()
            .unwrap();
    }
    // A prefix policy is more specific than the experiment's.
    s.set_retention(
        RetentionScope {
            namespace: Some("local".into()),
            project: Some("proj".into()),
            experiment: Some("run".into()),
            prefix: Some("/best".into()),
        },
        keep_last(4),
    )
    .unwrap();
    assert_eq!(s.retention_policies().unwrap().len(), 2);

    // Stored policies off: nothing is dropped.
    let r = s.gc(&GcOptions::new().stored_policies(false)).unwrap();
    assert!(r.retention_dropped.is_empty());

    let r = s.gc(&GcOptions::new()).unwrap();
    assert_eq!(
        r.retention_dropped.len(),
        3 + 1,
        "{:?}",
        r.retention_dropped
    );
    let by_prefix = |p: &str| -> Vec<u32> {
        s.list(&ListFilter {
            all_versions: true,
            prefix: Some(p.into()),
            ..Default::default()
        })
        .unwrap()
        .iter()
        .map(|r| r.version)
        .collect()
    };
    assert_eq!(by_prefix("/ckpt"), vec![4, 5]);
    assert_eq!(by_prefix("/best"), vec![2, 3, 4, 5]);

    // A policy given to gc replaces the stored ones in its scope.
    let r = s
        .gc(&GcOptions::new().retention(
            RetentionScope {
                prefix: Some("/best".into()),
                ..Default::default()
            },
            keep_last(1),
        ))
        .unwrap();
    assert_eq!(r.retention_dropped.len(), 3);
    assert_eq!(by_prefix("/best"), vec![5]);
    assert_eq!(by_prefix("/ckpt"), vec![4, 5]);

    // keep-within keeps everything just uploaded; tags alone never drop the newest.
    let within = RetentionPolicy {
        keep_within_secs: Some(3600),
        ..Default::default()
    };
    assert!(
        s.gc(&GcOptions::new().retention(everywhere(), within))
            .unwrap()
            .retention_dropped
            .is_empty()
    );
    let tags_only = RetentionPolicy {
        keep_tags: vec!["nothing-has-this".into()],
        ..Default::default()
    };
    let r = s
        .gc(&GcOptions::new().retention(everywhere(), tags_only))
        .unwrap();
    assert_eq!(r.retention_dropped.len(), 1, "only /ckpt v4 goes");
    assert_eq!(by_prefix("/ckpt"), vec![5]);

    assert!(
        s.clear_retention(RetentionScope {
            namespace: Some("local".into()),
            project: Some("proj".into()),
            experiment: Some("run".into()),
            prefix: Some("/best".into()),
        })
        .unwrap()
    );
    assert_eq!(s.retention_policies().unwrap().len(), 1);
    assert!(!s.clear_retention(everywhere()).unwrap());
    // Bad policies are refused and change nothing.
    assert!(s.set_retention(everywhere(), keep_last(0)).is_err());
    assert!(
        s.set_retention(everywhere(), RetentionPolicy::default())
            .is_err()
    );
    assert_eq!(s.retention_policies().unwrap().len(), 1);
    assert!(s.verify().unwrap().ok);
}

#[test]
fn dropped_versions_never_come_back_through_a_pull() {
    let t = tmp();
    let cfg = RemoteConfig::new(format!("file://{}", t.path().join("remote").display()));
    let a = Store::open(t.path().join("a")).unwrap();
    let k = key("model.bin");
    for i in 0..6u8 {
        a.put_reader(&vec![i; 5000][..], &k, NewVersion::default(), None)
            .unwrap();
    }
    let remote = Remote::open(&cfg).unwrap();
    a.push(&remote, None).unwrap();
    let b = Store::open(t.path().join("b")).unwrap();
    b.pull(&remote, None).unwrap();

    a.gc(&GcOptions::new().retention(everywhere(), keep_last(2)))
        .unwrap();
    assert_eq!(live_versions(&a, "model.bin"), vec![5, 6]);
    // The remote still holds every manifest: pulling them must not revive what a dropped.
    let p = a.pull(&remote, None).unwrap();
    assert!(p.conflicts.is_empty(), "{p:?}");
    assert_eq!(live_versions(&a, "model.bin"), vec![5, 6]);

    // The drop travels: b learns it through the remote.
    a.push(&remote, None).unwrap();
    b.pull(&remote, None).unwrap();
    assert_eq!(live_versions(&b, "model.bin"), vec![5, 6]);
    assert!(b.verify().unwrap().ok && a.verify().unwrap().ok);
}

/// A clean refusal whose one line says `why`.
#[track_caller]
fn refused_saying(r: &Run, why: &str) {
    refused(r, why);
    assert!(r.2.contains(why), "expected {why:?} in {:?}", r.2);
}

#[test]
fn the_cli_runs_retention() {
    let t = tmp();
    let root = t.path().join("store");
    let src = write_file(t.path(), "w.bin", &[1u8; 4000]);
    let up = |data: u8| {
        std::fs::write(&src, vec![data; 4000]).unwrap();
        ok(&run(
            &root,
            &[
                "upload",
                src.to_str().unwrap(),
                "--project",
                "p",
                "--experiment",
                "e",
                "--prefix",
                "/ckpt",
            ],
        ));
    };
    for i in 0..5 {
        up(i);
    }
    refused_saying(&run(&root, &["gc", "--prefix", "/ckpt"]), "--keep-last");
    refused_saying(&run(&root, &["gc", "--keep-within", "7y"]), "duration");
    refused_saying(&run(&root, &["gc", "--keep-last", "0"]), "at least 1");

    let out = ok(&run(
        &root,
        &[
            "gc",
            "--keep-last",
            "2",
            "--prefix",
            "/ckpt",
            "--dry-run",
            "--json",
        ],
    ))
    .to_string();
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["dryRun"], true);
    let dropped = j["retentionDropped"].as_array().unwrap();
    assert_eq!(dropped.len(), 3);
    assert_eq!(dropped[0]["version"], 1);
    assert!(j["reclaimedBytes"].as_u64().unwrap() > 0, "{j}");
    let text = ok(&run(&root, &["gc", "--keep-last", "2", "--dry-run"])).to_string();
    assert!(
        text.contains("retention would drop local/p/e/ckpt/w.bin v1"),
        "{text}"
    );

    ok(&run(
        &root,
        &[
            "retention",
            "set",
            "--namespace",
            "local",
            "--project",
            "p",
            "--keep-last",
            "1",
            "--keep-tag",
            "best",
            "--keep-within",
            "1s",
        ],
    ));
    let shown = ok(&run(&root, &["retention", "show"])).to_string();
    assert!(
        shown.contains("local/p/*  keep-last 1, keep-tag best, keep-within 1s"),
        "{shown}"
    );
    let js = ok(&run(&root, &["retention", "show", "--json"])).to_string();
    let js: serde_json::Value = serde_json::from_str(js.trim()).unwrap();
    assert_eq!(js[0]["policy"]["keepLast"], 1);
    refused_saying(
        &run(
            &root,
            &["retention", "set", "--project", "p", "--keep-last", "1"],
        ),
        "namespace",
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = ok(&run(&root, &["gc", "--json"])).to_string();
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["retentionDropped"].as_array().unwrap().len(), 4, "{j}");
    let r = run(&root, &["retention", "clear", "--namespace", "local"]);
    assert_eq!(r.0, 1, "no policy for that exact scope");
    ok(&run(
        &root,
        &[
            "retention",
            "clear",
            "--namespace",
            "local",
            "--project",
            "p",
        ],
    ));
    assert_eq!(
        ok(&run(&root, &["retention", "show", "--json"])).trim(),
        "[]"
    );
    ok(&run(&root, &["verify"]));
}
