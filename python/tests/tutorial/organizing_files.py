# Verbatim from the ml-dash Files tutorial.
with Experiment(name="my-experiment", project="project",
        local_path=".ml-dash") as experiment:
    # Models
    experiment.file("model.pth", prefix="/models")
    experiment.file("best_model.pth", prefix="/models/checkpoints")

    # Visualizations
    experiment.file("loss_curve.png", prefix="/visualizations")
    experiment.file("confusion_matrix.png", prefix="/visualizations")

    # Configuration
    experiment.file("config.json", prefix="/config")

    # Results
    experiment.file("results.csv", prefix="/results")
