//! "Organizing Files" from the ml-dash Files tutorial.
#[path = "support/rng.rs"]
mod rng;
#[path = "support/mod.rs"]
mod support;

use ml_dash::Experiment;

fn main() -> ml_dash::Result<()> {
    let (root, _scratch) = support::scratch();
    let experiment = Experiment::new("my-experiment", "project")
        .local_path(root)
        .open()?;
    // Models
    experiment.file("model.pth").prefix("/models").save()?;
    experiment
        .file("best_model.pth")
        .prefix("/models/checkpoints")
        .save()?;

    // Visualizations
    experiment
        .file("loss_curve.png")
        .prefix("/visualizations")
        .save()?;
    experiment
        .file("confusion_matrix.png")
        .prefix("/visualizations")
        .save()?;

    // Configuration
    experiment.file("config.json").prefix("/config").save()?;

    // Results
    experiment.file("results.csv").prefix("/results").save()?;

    for r in experiment.files("/")? {
        println!("{}  {} bytes  {}", r.full_path(), r.size_bytes, r.checksum);
    }
    Ok(())
}
