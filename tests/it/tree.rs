//! Checkpoint directories: a tree stored as one commit (a kill in the middle leaves none of it
//! visible), and each shard of a later save stored as deltas on the same shard of the last.

use ml_dash::{Experiment, ListFilter};

use crate::delta::model_checkpoints;
use crate::util::*;

#[test]
fn a_directory_of_8_shards_is_one_commit_even_when_killed() {
    let t = tmp();
    let root = t.path().join("store");
    let dir = t.path().join("ckpt");
    std::fs::create_dir_all(dir.join("shards")).unwrap();
    for i in 0..8u64 {
        std::fs::write(
            dir.join(format!("shards/rank-{i}.bin")),
            random_bytes(i, 24 << 20),
        )
        .unwrap();
    }
    std::fs::write(dir.join("config.json"), b"{\"layers\": 12}").unwrap();
    let args = [
        "upload",
        dir.to_str().unwrap(),
        "--project",
        "p",
        "--experiment",
        "e",
        "--prefix",
        "/checkpoints",
    ];
    // Killed while the shards are read: nothing of the tree is visible.
    let mut child = spawn(&root, &args);
    let packs = root.join("packs");
    let start = std::time::Instant::now();
    while packs_total(&root) < 40 << 20 && start.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(packs.exists());
    let s = ml_dash::Store::open(&root).unwrap();
    assert!(
        list_everything(&s).is_empty(),
        "a killed upload left versions"
    );
    assert!(s.verify().unwrap().ok);
    drop(s);
    // Run again: all 9 files at once.
    ok(&run(&root, &args));
    let s = ml_dash::Store::open(&root).unwrap();
    let all = list_everything(&s);
    assert_eq!(all.len(), 9);
    assert!(all.iter().any(|r| r.path == "/checkpoints/ckpt/shards"));
}

#[test]
fn each_shard_of_a_new_save_follows_the_same_shard_of_the_last() {
    let t = tmp();
    let exp = Experiment::new("run", "p")
        .local_path(t.path().join("store"))
        .open()
        .unwrap();
    let shards: Vec<Vec<Vec<u8>>> = (0..4)
        .map(|i| model_checkpoints(300_000, 40 + i, 2, 20))
        .collect();
    let dir = t.path().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    let mut new_bytes = Vec::new();
    for save in 0..2u32 {
        for (i, s) in shards.iter().enumerate() {
            std::fs::write(
                dir.join(format!("model-{i:05}-of-00004.safetensors")),
                &s[save as usize],
            )
            .unwrap();
        }
        let recs = exp.file(&dir).prefix("/hf").save_tree().unwrap();
        assert_eq!(recs.len(), 4);
        assert!(recs.iter().all(|r| r.version == save + 1));
        new_bytes.push(recs.iter().map(|r| r.new_bytes).sum::<u64>());
    }
    assert!(
        new_bytes[1] * 100 < new_bytes[0] * 60,
        "the second save is stored as deltas: {new_bytes:?}"
    );
    for (i, s) in shards.iter().enumerate() {
        let back = read_via_reader(
            &exp,
            &format!("/hf/model/model-{i:05}-of-00004.safetensors"),
            Some(1),
        );
        same_bytes(&back, &s[0], "shard of the first save");
    }
    let n = exp
        .list(ListFilter {
            all_versions: true,
            ..Default::default()
        })
        .unwrap()
        .len();
    assert_eq!(n, 8);
    // A tree with a FIFO in it stores nothing.
    mkfifo(&dir.join("pipe"));
    assert!(exp.file(&dir).prefix("/hf").save_tree().is_err());
    assert_eq!(list_everything(exp.store()).len(), 8);
}
