//! Shared by the tutorial examples: a scratch directory with the files the tutorial uploads, and the
//! store location (`ML_DASH_ROOT` or `.ml-dash`, made absolute before changing directory).

use std::path::PathBuf;

/// Change into a fresh scratch directory holding small stand-ins for the tutorial's files;
/// returns the absolute store path and the guard that deletes the scratch directory.
pub fn scratch() -> (PathBuf, tempfile::TempDir) {
    let root = std::env::var("ML_DASH_ROOT").unwrap_or_else(|_| ".ml-dash".into());
    let root = std::path::absolute(root).expect("absolute store path");
    let dir = tempfile::tempdir().expect("temp dir");
    std::env::set_current_dir(dir.path()).expect("chdir");
    let mut rng = crate::rng::Rng::new(0x1234_5678);
    let mut bytes = |n: usize| rng.bytes(n);
    for (name, size) in [
        ("model.pth", 3 << 20),
        ("best_model.pth", 3 << 20),
        ("confusion_matrix.png", 40_000),
    ] {
        std::fs::write(name, bytes(size)).expect("write stand-in");
    }
    std::fs::write("loss_curve.png", bytes(30_000)).expect("write stand-in");
    std::fs::write("config.json", "{\"lr\": 0.001}\n").expect("write stand-in");
    std::fs::write("results.csv", "epoch,loss\n1,0.5\n2,0.4\n").expect("write stand-in");
    (root, dir)
}
