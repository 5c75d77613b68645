//! Float checkpoints: realistic weights (a model updated by Adam, saved as
//! safetensors) are stored as byte planes and come back byte-exact.

use crate::adam;

use ml_dash::ExperimentKey;
use ml_dash::{NewVersion, Store, StoreOptions};

use crate::util::*;

fn stored_ratio(bf16: bool) -> f64 {
    let t = tmp();
    // Byte planes alone (deltas have their own tests in delta.rs).
    let s = Store::open_with(t.path(), StoreOptions::default().delta_depth(0)).unwrap();
    let mut m = adam::Model::new(2_000_000, 512, 3);
    m.train(20);
    let key = ExperimentKey::new("local", "g", "adam").unwrap();
    let (mut raw, mut stored) = (0u64, 0u64);
    for i in 0..2 {
        if i > 0 {
            m.train(30);
        }
        let data = m.safetensors(bf16);
        let k = key.file("/ckpt".into(), format!("step{i}.safetensors"));
        let rec = s
            .put_reader(&data[..], &k, NewVersion::default(), None)
            .unwrap();
        raw += data.len() as u64;
        stored += rec.new_bytes;
        let back = ml_dash::testing::read_all(&s.open_file(&k, None).unwrap()).unwrap();
        assert!(back == data, "checkpoint {i} did not come back byte-exact");
        assert_eq!(sha256_hex(&back), rec.checksum.to_string());
    }
    assert!(s.verify().unwrap().ok);
    stored as f64 / raw as f64
}

#[test]
fn fp32_checkpoints_store_at_most_85_percent() {
    let r = stored_ratio(false);
    assert!(r <= 0.85, "fp32 stored {:.1} % of raw", r * 100.0);
}

#[test]
fn bf16_checkpoints_store_at_most_70_percent() {
    let r = stored_ratio(true);
    assert!(r <= 0.70, "bf16 stored {:.1} % of raw", r * 100.0);
}
