//! The store against a model: a `HashMap` of path → list of versions (bytes, live?), driven by
//! a random sequence of uploads, deletes, metadata updates, gc runs and reopens. After every
//! step the store must list exactly the model's live paths with the model's latest bytes, and
//! old versions must read back byte-exact until deleted.
#![no_main]
use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use ml_dash::ChunkerConfig;
use ml_dash::ExperimentKey;
use ml_dash::{ListFilter, NewVersion, Store, StoreOptions};

fn opts() -> StoreOptions {
    StoreOptions::default()
        .chunker(ChunkerConfig {
            min: 128,
            avg: 512,
            max: 2048,
            ..ChunkerConfig::default()
        })
        .pack_target(1 << 20)
}

fn content(seed: u8, len: usize, base: &[u8]) -> Vec<u8> {
    // Mostly shared content (so chunks dedup and gc has shared chunks to keep), some fresh.
    let mut v: Vec<u8> = base.iter().cycle().take(len / 2).copied().collect();
    let fresh = len.saturating_sub(v.len());
    v.extend(ml_dash::testing::random_bytes(u64::from(seed), fresh));
    v
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let mut store = Store::open_with(&root, opts()).unwrap();
    let exp = ExperimentKey::new("local", "p", "e").unwrap();
    let names = ["a.bin", "b.bin", "c.bin"];
    let base: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 251) as u8).collect();
    // path -> versions (bytes, live)
    let mut model: HashMap<&str, Vec<(Vec<u8>, bool)>> = HashMap::new();
    for op in data.chunks(3).take(40) {
        let (kind, a, b) = (
            op[0] % 6,
            op.get(1).copied().unwrap_or(0),
            op.get(2).copied().unwrap_or(0),
        );
        let name = names[a as usize % names.len()];
        let key = exp.file("/m".into(), name.into());
        match kind {
            0 | 1 => {
                let bytes = content(b, (b as usize) * 37, &base);
                let rec = store
                    .put_reader(
                        std::io::Cursor::new(bytes.clone()),
                        &key,
                        NewVersion::default(),
                        None,
                    )
                    .unwrap();
                let versions = model.entry(name).or_default();
                // Versions continue after deletes.
                assert_eq!(rec.version as usize, versions.len() + 1);
                versions.push((bytes, true));
            }
            2 => {
                let live = model.get(name).is_some_and(|v| v.iter().any(|(_, l)| *l));
                let r = store.delete(&key);
                assert_eq!(r.is_ok(), live, "delete of {name}");
                if let Some(v) = model.get_mut(name) {
                    v.iter_mut().for_each(|(_, l)| *l = false);
                }
            }
            3 => {
                store
                    .gc(&ml_dash::GcOptions::new().rewrite_threshold((b % 3) as f64 / 2.0))
                    .unwrap();
            }
            4 => {
                drop(store);
                store = Store::open_with(&root, opts()).unwrap();
            }
            _ => {
                if let Ok(rec) = store.resolve(&key, None) {
                    store
                        .update(
                            rec.id,
                            &ml_dash::RecordChanges {
                                description: None,
                                tags: Some(vec![format!("t{b}")]),
                                metadata: None,
                            },
                        )
                        .unwrap();
                }
            }
        }
        // Check every step against the model.
        let listed = store.list(&ListFilter::default()).unwrap();
        let live: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| model.get(n).is_some_and(|v| v.iter().any(|(_, l)| *l)))
            .collect();
        assert_eq!(listed.len(), live.len());
        for (name, versions) in &model {
            let key = exp.file("/m".into(), (*name).into());
            for (i, (bytes, live)) in versions.iter().enumerate() {
                let r = store.open_file(&key, Some(i as u32 + 1));
                if *live {
                    let got = ml_dash::testing::read_all(&r.unwrap()).unwrap();
                    assert_eq!(&got, bytes, "{name} v{}", i + 1);
                } else {
                    assert!(r.is_err(), "{name} v{} is deleted", i + 1);
                }
            }
        }
    }
    assert!(store.verify().unwrap().ok);
});
