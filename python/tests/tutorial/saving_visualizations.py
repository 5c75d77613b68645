# Verbatim from the ml-dash Files tutorial.
import matplotlib.pyplot as plt
from ml_dash import Experiment

with Experiment(name="my-experiment", project="project",
        local_path=".ml-dash") as experiment:
    # Generate plot
    losses = [0.5, 0.4, 0.3, 0.25, 0.2]
    plt.plot(losses)
    plt.title("Training Loss")
    plt.xlabel("Epoch")
    plt.ylabel("Loss")

    # Save and upload
    plt.savefig("loss_curve.png")
    experiment.file(
        "loss_curve.png",
        prefix="/visualizations",
        description="Training loss over epochs",
        tags=["plot"]
    )

    plt.close()
