//! "Basic Upload" from the ml-dash Files tutorial.
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
    let result = experiment.file("model.pth").prefix("/models").save()?;

    println!("Uploaded: {}", result.filename);
    println!("Size: {} bytes", result.size_bytes);
    println!("Checksum: {}", result.checksum);
    Ok(())
}
