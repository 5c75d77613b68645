# Verbatim from the ml-dash Files tutorial.
import json
from ml_dash import Experiment

config = {
    "model": {"architecture": "resnet50", "pretrained": True},
    "training": {"epochs": 100, "batch_size": 32, "lr": 0.001}
}

with Experiment(name="my-experiment", project="project",
        local_path=".ml-dash") as experiment:
    # Metric as parameters
    experiment.parameters().set(**config)

    # Also save as file
    with open("config.json", "w") as f:
        json.dump(config, f, indent=2)

    experiment.file(
        "config.json",
        prefix="/config",
        description="Experiment configuration",
        tags=["config"]
    )
