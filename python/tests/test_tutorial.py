"""Each of the six code blocks of the Files tutorial, run unchanged against our module, in one
directory as a reader of the page would; then the CLI lists what Python stored."""

import importlib.util
import math
import random
import sys
from pathlib import Path

import pytest

from conftest import tutorial_block

import ml_dash

RECORD_KEYS = {
    "id", "namespace", "project", "experiment", "path", "filename", "version", "sizeBytes",
    "checksum", "contentType", "description", "tags", "metadata", "uploadedAt", "updatedAt",
    "deletedAt", "newBytes",
}


def run_block(name, **names):
    """Execute a block of the ml-dash Files tutorial with `Experiment` in scope (blocks 2, 3
    assume the import of block 1) plus the stand-ins given."""
    ns = {"Experiment": ml_dash.Experiment, "__name__": "__tutorial__", **names}
    exec(compile(tutorial_block(name), f"tutorial/{name}.py", "exec"), ns)
    return ns


def make_files(d: Path):
    rnd = random.Random(5)
    for name, size in [("model.pth", 300_000), ("best_model.pth", 200_000),
                       ("loss_curve.png", 20_000), ("confusion_matrix.png", 15_000)]:
        (d / name).write_bytes(rnd.randbytes(size))
    (d / "config.json").write_text('{"lr": 0.001}\n')
    (d / "results.csv").write_text("epoch,loss\n" + "".join(f"{i},{1 / (i + 1):.4f}\n" for i in range(50)))


def training_stand_ins():
    """The names the training block leaves undefined: a model, loaders and two functions."""
    if importlib.util.find_spec("torch") is None:
        sys.path.insert(0, str(Path(__file__).parent / "stand_ins"))
    state = {"step": 0}

    class Model:
        def state_dict(self):
            rnd = random.Random(state["step"])
            return {"layer.weight": [rnd.random() for _ in range(2000)], "step": state["step"]}

    def train_one_epoch(model, loader):
        state["step"] += 1
        return 1.0 / state["step"]

    def validate(model, loader):
        s = state["step"]
        return 1.0 / s, 0.5 + 0.4 * (1 - math.exp(-s / 20)) + (0.01 if s % 7 == 0 else 0.0)

    return dict(model=Model(), train_loader=[], val_loader=[],
                train_one_epoch=train_one_epoch, validate=validate)


def test_the_six_tutorial_blocks_run_unchanged_and_the_cli_lists_them(workdir, cli, capsys, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    make_files(workdir)
    ns = run_block("basic_upload")
    out = capsys.readouterr().out
    result = ns["result"]
    assert RECORD_KEYS <= set(result), set(result) ^ RECORD_KEYS
    assert f"Uploaded: model.pth" in out
    assert f"Size: 300000 bytes" in out
    assert f"Checksum: {result['checksum']}" in out and len(result["checksum"]) == 64

    run_block("organizing_files")
    run_block("file_metadata")
    run_block("saving_visualizations")
    run_block("uploading_configuration")
    run_block("training_checkpoints", **training_stand_ins())

    listed = {r["path"].rstrip("/") + "/" + r["filename"]
              for r in cli("list", "--project", "project", "--experiment", "my-experiment", "--json")}
    for p in ["/models/model.pth", "/models/checkpoints/best_model.pth",
              "/visualizations/loss_curve.png", "/visualizations/confusion_matrix.png",
              "/config/config.json", "/results/results.csv", "/models/best_model.pth"]:
        assert p in listed, (p, listed)

    recs = cli("list", "--project", "cv", "--experiment", "resnet-training", "--json")
    paths = {r["path"].rstrip("/") + "/" + r["filename"]: r for r in recs}
    for e in range(10, 101, 10):
        assert f"/checkpoints/checkpoint_epoch_{e}.pth" in paths
        assert paths[f"/checkpoints/checkpoint_epoch_{e}.pth"]["metadata"]["epoch"] == e
    best = paths["/models/best_model.pth"]
    assert best["tags"] == ["best"] and best["description"].startswith("Best model (accuracy: ")

    # Parameters, logs and metrics stored by the blocks, as the CLI shows them.
    params = cli("params", "--project", "cv", "--experiment", "resnet-training", "--json")
    assert params[0]["data"]["model"] == "resnet50"
    logs = cli("logs", "--project", "cv", "--experiment", "resnet-training", "--json")
    assert logs[0]["message"] == "Starting training" and logs[-1]["message"] == "Training complete"
    cfg = cli("params", "--project", "project", "--experiment", "my-experiment", "--json")
    assert cfg[0]["data"]["training.batch_size"] == 32
    metrics = cli("metrics", "--project", "cv", "--experiment", "resnet-training",
                  "--name", "val_accuracy", "--json")
    assert len(metrics) == 100

    # File metadata block: description, tags and metadata as given.
    with ml_dash.Experiment(name="my-experiment", project="project") as exp:
        r = exp.get("/models/best_model.pth")
        assert r["description"] == "Best model from epoch 50"
        assert r["tags"] == ["checkpoint", "best"]
        assert r["metadata"] == {"epoch": 50, "val_accuracy": 0.95, "optimizer_state": True}
        # The training block's checkpoints load straight from the store.
        torch = sys.modules.get("torch") or pytest.importorskip("torch")
    with ml_dash.Experiment(name="resnet-training", project="cv") as exp:
        sd = torch.load(exp.open_file("/checkpoints/checkpoint_epoch_100.pth"))
        assert sd["step"] == 100
