//! "File Metadata" from the ml-dash Files tutorial.
#[path = "support/rng.rs"]
mod rng;
#[path = "support/mod.rs"]
mod support;

use ml_dash::Experiment;
use serde_json::json;

fn main() -> ml_dash::Result<()> {
    let (root, _scratch) = support::scratch();
    let experiment = Experiment::new("my-experiment", "project")
        .local_path(root)
        .open()?;
    let record = experiment
        .file("best_model.pth")
        .prefix("/models")
        .description("Best model from epoch 50")
        .tags(["checkpoint", "best"])
        .metadata(json!({
            "epoch": 50,
            "val_accuracy": 0.95,
            "optimizer_state": true
        }))
        .save()?;
    println!(
        "{}",
        serde_json::to_string_pretty(&record).expect("record serializes")
    );
    Ok(())
}
