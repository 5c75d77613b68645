"""Loading a checkpoint through the store: `torch.load(experiment.open_file(...))` against
`torch.load(path)` on the same `torch.save` files, best of N with `sync` before each timed step.

Stores the given files, in order, as versions of one path in a fresh store (the first whole,
later ones as deltas on the version before, as the default delta depth allows), then times
for each version:
  torch.load(path)              the file, from the page cache
  torch.load(open_file)         through the store's file object
  open_file().read()            every byte through the file object
  read_bytes                    every byte into one bytes object
and checks once that torch.load through the store gives tensors equal to the file's.
Run with the venv of scripts/bench/ckpt_venv.sh after installing the module into it
(`pip install ./python`, or a wheel `maturin build` made):
  python scripts/bench/torch_load.py [--runs 5] [--store DIR] FILE.pt [FILE.pt ...]
"""
import argparse
import os
import shutil
import subprocess
import time

import torch

import ml_dash


def best(runs, f):
    times = []
    for _ in range(runs):
        subprocess.run(["sync"], check=True)
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--store", default="/var/tmp/ml-dash-torch-load")
    a = ap.parse_args()
    torch.set_num_threads(2)

    shutil.rmtree(a.store, ignore_errors=True)
    exp = ml_dash.Experiment(name="run", project="bench", local_path=a.store).open()
    for f in a.files:
        exp.file(f, prefix="/ckpt", name="model.pt")

    print(f"ml_dash from {os.path.dirname(ml_dash.__file__)}, best of {a.runs}")
    print("| version | MB | torch.load(path) | torch.load(open_file) | ratio | open_file().read() | read_bytes |")
    print("|---|---|---|---|---|---|---|")
    for v, f in enumerate(a.files, start=1):
        want = torch.load(f)
        with exp.open_file("/ckpt/model.pt", version=v) as fh:
            got = torch.load(fh)
        assert same(want, got), f"v{v}: torch.load through the store differs from the file"
        del want, got

        def from_store():
            with exp.open_file("/ckpt/model.pt", version=v) as fh:
                torch.load(fh)

        def read_all():
            with exp.open_file("/ckpt/model.pt", version=v) as fh:
                fh.read()

        # One round times each way once, so that they share the machine's moods (timings on a
        # shared VM drift by 20 % and more from minute to minute); best of the rounds.
        steps = {
            "path": lambda: torch.load(f),
            "store": from_store,
            "whole": read_all,
            "read_bytes": lambda: exp.read_bytes("/ckpt/model.pt", version=v),
        }
        got = {k: best(1, g) for k, g in steps.items()}
        for _ in range(a.runs - 1):
            for k, g in steps.items():
                got[k] = min(got[k], best(1, g))
        path, store, whole, rb = got["path"], got["store"], got["whole"], got["read_bytes"]
        mb = os.path.getsize(f) / 1e6
        print(
            f"| v{v} | {mb:.0f} | {path:.3f} s | {store:.3f} s | {store / path:.1f}x "
            f"| {whole:.3f} s | {rb:.3f} s |"
        )
    exp.close()
    shutil.rmtree(a.store, ignore_errors=True)


if __name__ == "__main__":
    main()
