//! Measure how checkpoints of a model trained with Adam compress.
//!
//! ```sh
//! cargo run --release --example checkpoint_compression -- [PARAMS_MILLIONS] [CHECKPOINTS] [STEPS_BETWEEN]
//! ```
//! Defaults: 16 M parameters (64 MiB in fp32), 4 checkpoints, 100 Adam steps apart. For fp32 and
//! bf16 safetensors (`ML_DASH_TORCH=1`: PyTorch-style zip archives) it prints: the stored bytes
//! of every checkpoint uploaded (as a file, under a new name each time) into a fresh store with
//! deltas on, ingest time, verified read speed, and, for comparison, what a plain XOR against the
//! previous checkpoint followed by the chunk codec would store. Environment: `ML_DASH_LR`
//! (Adam learning rate, default 1e-3), `ML_DASH_DELTA_DEPTH` (default 2), `ML_DASH_COMPARE`,
//! `ML_DASH_DELTA_SUB`, `ML_DASH_WRITE_TO=DIR` (also write the checkpoints there).

#[path = "support/adam.rs"]
mod adam;

use std::time::Instant;

use ml_dash::ExperimentKey;
use ml_dash::testing::codec::{self, Compression};
use ml_dash::{NewVersion, Store, StoreOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let params = args.first().copied().unwrap_or(16) * 1_000_000;
    let count = args.get(1).copied().unwrap_or(4);
    let steps = u32::try_from(args.get(2).copied().unwrap_or(100)).expect("steps fit a u32");
    let mut model = adam::Model::new(params, 1024, 7);
    if let Ok(lr) = std::env::var("ML_DASH_LR") {
        model.lr = lr.parse().expect("ML_DASH_LR is a number");
    }
    model.train(10);
    let mut ckpts = Vec::new();
    for i in 0..count {
        if i > 0 {
            model.train(steps);
        }
        // ML_DASH_TORCH=1: PyTorch-style zip archives instead of safetensors.
        if std::env::var("ML_DASH_TORCH").is_ok() {
            ckpts.push((model.torch_zip(false, false), model.torch_zip(true, false)));
        } else {
            ckpts.push((model.safetensors(false), model.safetensors(true)));
        }
    }
    // ML_DASH_WRITE_TO=DIR: also write the checkpoints there (for timing `ml-dash upload`).
    if let Ok(dir) = std::env::var("ML_DASH_WRITE_TO") {
        std::fs::create_dir_all(&dir)?;
        for (i, (f, b)) in ckpts.iter().enumerate() {
            std::fs::write(format!("{dir}/fp32_{i}.safetensors"), f)?;
            std::fs::write(format!("{dir}/bf16_{i}.safetensors"), b)?;
        }
    }
    let ext = if std::env::var("ML_DASH_TORCH").is_ok() {
        "pth"
    } else {
        "safetensors"
    };
    let policies: Vec<(&str, Compression)> = match std::env::var("ML_DASH_COMPARE") {
        Ok(_) => vec![
            ("auto", Compression::default()),
            ("off", Compression::Off),
            ("zstd-1 whole chunk", Compression::Always(1)),
        ],
        Err(_) => vec![("auto", Compression::default())],
    };
    for (bf16, (pname, policy)) in [false, true]
        .into_iter()
        .flat_map(|b| policies.iter().map(move |p| (b, *p)))
    {
        let dir = tempfile::tempdir()?;
        let scratch = tempfile::tempdir()?;
        let mut opts = StoreOptions::default().compression(policy);
        if let Ok(d) = std::env::var("ML_DASH_DELTA_DEPTH") {
            opts = opts.delta_depth(d.parse().expect("ML_DASH_DELTA_DEPTH is a number"));
        }
        let store = Store::open_with(dir.path(), opts)?;
        let key = ExperimentKey::new("local", "bench", "adam")?;
        let (mut raw, mut stored, mut secs, mut cpu) = (0u64, 0u64, 0f64, 0f64);
        let mut delta_stored = 0u64;
        let mut per_version = Vec::new();
        let mut prev: Option<&Vec<u8>> = None;
        for (i, (f32s, b16s)) in ckpts.iter().enumerate() {
            let data = if bf16 { b16s } else { f32s };
            // Through a file, as training code saves checkpoints (zip layouts are read from
            // the central directory of a file).
            let src = scratch.path().join("checkpoint.tmp");
            std::fs::write(&src, data)?;
            let t = Instant::now();
            let c0 = cpu_seconds();
            let rec = store.put_file(
                &src,
                &key.file("/checkpoints".into(), format!("step_{i}.{ext}")),
                NewVersion::default(),
                None,
            )?;
            secs += t.elapsed().as_secs_f64();
            cpu += cpu_seconds() - c0;
            raw += data.len() as u64;
            stored += rec.new_bytes;
            per_version.push(100.0 * rec.new_bytes as f64 / data.len() as f64);
            // Delta estimate: XOR with the previous checkpoint, then the chunk codec per MiB.
            delta_stored += match prev {
                Some(p) if p.len() == data.len() => data
                    .chunks(1 << 20)
                    .zip(p.chunks(1 << 20))
                    .map(|(a, b)| {
                        let x: Vec<u8> = if std::env::var("ML_DASH_DELTA_SUB").is_ok() && bf16 {
                            a.chunks(2)
                                .zip(b.chunks(2))
                                .flat_map(|(a, b)| {
                                    let d = u16::from_le_bytes([a[0], a[1]])
                                        .wrapping_sub(u16::from_le_bytes([b[0], b[1]]));
                                    // zigzag so small negative differences are small too
                                    let d = d.cast_signed();
                                    ((d << 1) ^ (d >> 15)).cast_unsigned().to_le_bytes()
                                })
                                .collect()
                        } else {
                            a.iter().zip(b).map(|(a, b)| a ^ b).collect()
                        };
                        codec::encode(&x, Compression::default()).map_or(x.len(), |(_, s)| s.len())
                            as u64
                    })
                    .sum::<u64>(),
                _ => rec.new_bytes,
            };
            prev = Some(data);
        }
        let t = Instant::now();
        let mut read = 0u64;
        for i in 0..ckpts.len() {
            let r = store.open_file(
                &key.file("/checkpoints".into(), format!("step_{i}.{ext}")),
                None,
            )?;
            read += r.copy_to(&mut std::io::sink())?;
        }
        let rsecs = t.elapsed().as_secs_f64();
        println!(
            "{:>4} {pname}: stored per checkpoint (% of raw): {}",
            if bf16 { "bf16" } else { "fp32" },
            per_version
                .iter()
                .map(|p| format!("{p:.1}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        println!(
            "{:>4} {pname}: {} checkpoints of {:.1} MiB, {} steps apart: stored {:.1} % of raw, ingest {:.2} GB/s ({:.2} CPU s/GB), read {:.2} GB/s; XOR delta vs previous + codec: {:.1} % of raw",
            if bf16 { "bf16" } else { "fp32" },
            ckpts.len(),
            raw as f64 / ckpts.len() as f64 / f64::from(1 << 20),
            steps,
            100.0 * stored as f64 / raw as f64,
            raw as f64 / secs / 1e9,
            cpu / (raw as f64 / 1e9),
            read as f64 / rsecs / 1e9,
            100.0 * delta_stored as f64 / raw as f64,
        );
    }
    Ok(())
}

/// User + system CPU time of this process so far (Linux `/proc/self/stat`, 100 ticks/s).
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}
