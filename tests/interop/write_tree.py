"""Write experiments with the real ml-dash client in local mode, for `ml-dash import`.

Experiment <ns>/proj/exp: files in nested prefixes and at the root (one uploaded, then
deleted), nested parameters set twice, log lines with and without metadata, two metric
series. Experiment <ns>/proj/exp2: two files (the test tears its index).

usage: write_tree.py DASH_ROOT SCRATCH_DIR
"""

import json
import os
import sys

os.environ.setdefault("ML_DASH_NO_VERSION_CHECK", "1")
os.environ.setdefault("ML_DASH_BUFFER_ENABLED", "false")

from ml_dash import Experiment  # noqa: E402


def write(scratch, name, data):
    p = os.path.join(scratch, name)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(data)
    return p


def main():
    root, scratch = sys.argv[1:3]
    model = bytes((i * 7 + 3) % 251 for i in range(300_000))
    with Experiment(prefix="ns/proj/exp", dash_root=root).run as exp:
        exp.params.set(model={"architecture": "resnet50", "pretrained": True}, lr=0.001)
        exp.params.set(training={"epochs": 3, "batch_size": 32})
        exp.log("Starting training")
        for epoch in range(3):
            loss = 1.0 / (epoch + 1) + 0.123456789
            exp.metrics("train_loss").log(value=loss, epoch=epoch)
            exp.metrics("val").log(accuracy=0.5 + epoch / 10, epoch=epoch)
            exp.log(f"epoch {epoch} done", level="info", loss=loss)
        exp.log("lr is high", level="warn")
        exp.files("models").upload(
            write(scratch, "model.pth", model),
            description="Best model from epoch 2",
            tags=["checkpoint", "best"],
            metadata={"epoch": 2, "val_accuracy": 0.7},
        )
        exp.files("models/checkpoints").upload(write(scratch, "ckpt_1.pth", model[:1000]))
        exp.files("config").upload(
            write(scratch, "config.json", json.dumps({"lr": 0.001}, indent=2).encode())
        )
        exp.files().upload(write(scratch, "results.csv", b"epoch,loss\n0,1.1\n1,0.6\n"))
        exp.files("tmp").upload(write(scratch, "scratch.bin", b"to be deleted"))
        exp.files("tmp/scratch.bin").delete()
        exp.log("Training complete")
    with Experiment(prefix="ns/proj/exp2", dash_root=root).run as exp:
        exp.files("a").upload(write(scratch, "one.txt", b"first file\n"))
        exp.files("b").upload(write(scratch, "two.txt", b"second file, longer " * 50))


if __name__ == "__main__":
    main()
