//! "Uploading Configuration" from the ml-dash Files tutorial.
#[path = "support/rng.rs"]
mod rng;
#[path = "support/mod.rs"]
mod support;

use ml_dash::Experiment;
use serde_json::json;

fn main() -> ml_dash::Result<()> {
    let (root, _scratch) = support::scratch();
    let config = json!({
        "model": {"architecture": "resnet50", "pretrained": true},
        "training": {"epochs": 100, "batch_size": 32, "lr": 0.001}
    });
    let experiment = Experiment::new("my-experiment", "project")
        .local_path(root)
        .open()?;
    // Metric as parameters
    experiment.parameters().set(&config)?;

    // Also save as file
    let text = serde_json::to_string_pretty(&config).expect("config serializes");
    std::fs::write("config.json", text).map_err(|e| ml_dash::Error::Io {
        path: "config.json".into(),
        source: e,
    })?;
    let r = experiment
        .file("config.json")
        .prefix("/config")
        .description("Experiment configuration")
        .tags(["config"])
        .save()?;
    println!("{} {} bytes {}", r.full_path(), r.size_bytes, r.checksum);
    let params = experiment.parameters().get()?.unwrap_or_default();
    println!(
        "parameters: {}",
        serde_json::to_string(&params.data).expect("params serialize")
    );
    Ok(())
}
