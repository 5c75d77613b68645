//! The main job: "Training with Checkpoints" of the ml-dash Files tutorial, simulated in Rust.
//!
//! A model with a frozen backbone (24 MiB of fp32, never changes) and a trained head (8 MiB of
//! fp32 that drifts every epoch) trains for 100 epochs; every 10 epochs a checkpoint is saved,
//! and the best model is re-saved whenever validation accuracy improves. Each save goes through
//! `experiment.file(...)`. At the end it prints the records and a dedup / compression summary.
//!
//! Run: `cargo run --release --example training_checkpoints` (store: `./.ml-dash`, or
//! `ML_DASH_ROOT`). Parameters, log lines and metrics are stored too (`ml-dash params|logs|
//! metrics --project cv --experiment resnet-training`).

use std::path::Path;

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

use ml_dash::Scope;
use ml_dash::{Experiment, FileRecord};
use serde_json::json;

const BACKBONE_FLOATS: usize = 6 << 20; // 24 MiB
const HEAD_FLOATS: usize = 2 << 20; // 8 MiB

/// Roughly normal, small weights.
fn weight(rng: &mut Rng) -> f32 {
    rng.normal() * (0.05 / 1.732)
}

/// Write a safetensors-like file: a JSON header, then the raw little-endian tensors.
fn save_checkpoint(path: &Path, backbone: &[f32], head: &[f32]) -> std::io::Result<()> {
    let header = json!({
        "backbone.weight": {"dtype": "F32", "shape": [backbone.len()], "data_offsets": [0, backbone.len() * 4]},
        "head.weight": {"dtype": "F32", "shape": [head.len()], "data_offsets": [backbone.len() * 4, (backbone.len() + head.len()) * 4]},
    })
    .to_string();
    let mut out = Vec::with_capacity(8 + header.len() + (backbone.len() + head.len()) * 4);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for w in backbone.iter().chain(head) {
        out.extend_from_slice(&w.to_le_bytes());
    }
    std::fs::write(path, out)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::var("ML_DASH_ROOT").unwrap_or_else(|_| ".ml-dash".into());
    let work = tempfile::tempdir()?;
    let experiment = Experiment::new("resnet-training", "cv")
        .local_path(&root)
        .open()?;
    println!("store: {root}  experiment: cv/resnet-training");
    experiment
        .parameters()
        .set(&json!({"model": "resnet50", "epochs": 100}))?;
    experiment.log("Starting training")?;

    let mut rng = Rng::new(0x5eed);
    let backbone: Vec<f32> = (0..BACKBONE_FLOATS).map(|_| weight(&mut rng)).collect();
    let mut head: Vec<f32> = (0..HEAD_FLOATS).map(|_| weight(&mut rng)).collect();
    let mut best_accuracy = 0.0f64;
    let mut records: Vec<FileRecord> = Vec::new();
    let started = std::time::Instant::now();

    for epoch in 0..100u32 {
        // One "training step": every head weight moves a little.
        for w in &mut head {
            *w -= 1e-3 * (*w + (weight(&mut rng) * 0.1));
        }
        let val_accuracy = 1.0
            - 0.5 * (-f64::from(epoch) / 30.0).exp()
            - 0.02 * (f64::from(epoch * 7 % 11) / 11.0);
        let train_loss = 0.5 * (-f64::from(epoch) / 25.0).exp() + 0.01;

        // Metric metrics
        experiment
            .metric("train_loss")
            .append(&json!({"value": train_loss, "epoch": epoch}))?;
        experiment
            .metric("val_accuracy")
            .append(&json!({"value": val_accuracy, "epoch": epoch}))?;

        if (epoch + 1) % 10 == 0 {
            let checkpoint_path = work
                .path()
                .join(format!("checkpoint_epoch_{}.pth", epoch + 1));
            save_checkpoint(&checkpoint_path, &backbone, &head)?;
            let rec = experiment
                .file(&checkpoint_path)
                .prefix("/checkpoints")
                .tags(["checkpoint"])
                .metadata(json!({"epoch": epoch + 1, "val_accuracy": val_accuracy}))
                .save()?;
            records.push(rec);
        }
        if val_accuracy > best_accuracy && (epoch % 5 == 4) {
            best_accuracy = val_accuracy;
            let best = work.path().join("best_model.pth");
            save_checkpoint(&best, &backbone, &head)?;
            let rec = experiment
                .file(&best)
                .prefix("/models")
                .description(format!("Best model (accuracy: {best_accuracy:.4})"))
                .tags(["best"])
                .metadata(json!({"epoch": epoch + 1, "accuracy": best_accuracy}))
                .save()?;
            experiment.log(format!(
                "New best model saved (accuracy: {best_accuracy:.4})"
            ))?;
            records.push(rec);
        }
    }
    experiment.log("Training complete")?;
    let elapsed = started.elapsed().as_secs_f64();

    println!(
        "\n{:<42} {:>3} {:>10} {:>10}  checksum",
        "path", "ver", "size", "new bytes"
    );
    for r in &records {
        println!(
            "{:<42} {:>3} {:>10} {:>10}  {}",
            r.full_path(),
            r.version,
            r.size_bytes,
            r.new_bytes,
            &r.checksum.to_hex()[..16]
        );
    }
    let logical: u64 = records.iter().map(|r| r.size_bytes).sum();
    let added: u64 = records.iter().map(|r| r.new_bytes).sum();
    let st = experiment.store().stats(&Scope {
        namespace: Some("local".into()),
        project: Some("cv".into()),
        experiment: Some("resnet-training".into()),
    })?;
    println!(
        "\nthis run: {} uploads, {:.1} MiB handed to the store, {:.1} MiB added to it ({:.1}% of logical) in {elapsed:.1} s including checkpoint generation",
        records.len(),
        logical as f64 / 1048576.0,
        added as f64 / 1048576.0,
        100.0 * added as f64 / logical.max(1) as f64
    );
    println!(
        "experiment now: {} files, {} versions, {:.1} MiB logical, {:.1} MiB unique after dedup, {:.1} MiB stored after compression ({:.2}x saving), {} chunks",
        st.files,
        st.versions,
        st.logical_bytes as f64 / 1048576.0,
        st.unique_bytes as f64 / 1048576.0,
        st.stored_bytes as f64 / 1048576.0,
        st.saving_ratio,
        st.chunks
    );
    Ok(())
}
