"""ml-dash on checkpoint series: each series uploaded in order into a fresh store (deltas on, the
default), with wall time per upload and per verified download of each version, against
`openssl dgst -sha256` of the same file; stored bytes from `ml-dash stats`. Best of --runs
(a fresh store each run), `sync` before each timed step, page cache warm.
  python3 scripts/bench/ckpt_ours.py --bin target/release/ml-dash --work DIR [--runs 3]
      [--json OUT] --series NAME FILE... [--series NAME FILE...]...
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time


def timed(cmd):
    os.sync()
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--series", nargs="+", action="append", required=True)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    report = {}
    for name, *files in a.series:
        n = len(files)
        floor = [min(timed(["openssl", "dgst", "-sha256", f]) for _ in range(a.runs)) for f in files]
        up, down = [float("inf")] * n, [float("inf")] * n
        stats = None
        for _ in range(a.runs):
            root = os.path.join(a.work, f"store-{name}")
            shutil.rmtree(root, ignore_errors=True)
            base = [a.bin, "--root", root]
            where = ["--project", "p", "--experiment", name]
            for i, f in enumerate(files):
                cmd = base + ["upload", *where, "--to", "ckpt.bin", f]
                up[i] = min(up[i], timed(cmd))
            out = os.path.join(a.work, "out.bin")
            for i in range(n):
                cmd = base + ["download", *where, "/ckpt.bin", "--version", str(i + 1), "-o", out]
                down[i] = min(down[i], timed(cmd))
                # Byte-exact, once per version and run (untimed).
                if subprocess.run(["cmp", "-s", out, files[i]]).returncode != 0:
                    sys.exit(f"{name} version {i + 1}: downloaded bytes differ")
            stats = json.loads(subprocess.run(base + ["stats", "--json"], check=True,
                                              capture_output=True).stdout)
        raw = sum(os.path.getsize(f) for f in files)
        report[name] = {
            "files": files, "raw_bytes": raw, "stored_bytes": stats["storedBytes"],
            "ratio": stats["storedBytes"] / raw, "codec_bytes": stats["codecBytes"],
            "upload_s": up, "download_s": down, "sha256_s": floor,
            "upload_x_floor": [u / f for u, f in zip(up, floor)],
            "download_x_floor": [d / f for d, f in zip(down, floor)],
        }
        r = report[name]
        print(f"{name}: stored {r['stored_bytes']:,} of {raw:,} ({r['ratio']:.3f}); "
              f"upload x floor " + " ".join(f"{x:.2f}" for x in r["upload_x_floor"]) +
              "; download x floor " + " ".join(f"{x:.2f}" for x in r["download_x_floor"]),
              flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)


main()
