"""Checkpoint lifecycle figures for BENCHMARKS.md:

1. retention: a series of N float32 safetensors checkpoints (SIZE_MIB each, weights drifting as
   under training) uploaded as versions of one path and pushed; then `gc --keep-last 3`: pack
   bytes before and after, and what gc reports; then a push (the drop travels) and the gc of
   the remote in its two runs (`--grace 1s`: the first marks, the second deletes): pack bytes
   in the bucket before and after;
2. lazy read of a 1 GiB remote version: `download --from` (cold record cache) against `pull`
   into a fresh store plus a local `download`; the remote is Garage when target/garage/env
   exists (scripts/garage.sh start), else a file:// directory;
3. how long a training step blocks on `experiment.file(ckpt)` with and without
   `background=True`, for a 1 GiB checkpoint.

Best of RUNS, `sync` before each timed step, page cache warm for the sources.

    target/py-venv/bin/python scripts/bench/lifecycle.py [RUNS] [SERIES_N] [SIZE_MIB]
    (python/tests/run.sh builds target/py-venv with the module; needs numpy, which it installs
    with matplotlib; BIN=path/to/ml-dash, default target/release/ml-dash; ONLY=retention,lazy
    runs only those parts)
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import ml_dash

REPO = Path(__file__).resolve().parents[2]
BIN = os.environ.get("BIN", str(REPO / "target/release/ml-dash"))
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
SERIES_N = int(sys.argv[2]) if len(sys.argv) > 2 else 10
SIZE_MIB = int(sys.argv[3]) if len(sys.argv) > 3 else 128


def sh(*args, env=None, root=None):
    cmd = [BIN] + (["--root", str(root)] if root else []) + [str(a) for a in args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd}: {out.stderr}")
    return out.stdout


def sync():
    subprocess.run(["sync"], check=True)


def pack_bytes(root):
    return sum(p.stat().st_size for p in (Path(root) / "packs").glob("*.pack"))


def safetensors(arr):
    header = json.dumps({"w": {"dtype": "F32", "shape": [arr.size], "data_offsets": [0, arr.nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + arr.tobytes()


def retention(work):
    rng = np.random.default_rng(1)
    n = SIZE_MIB << 18
    w = rng.standard_normal(n, dtype=np.float32) * 0.02
    root = work / "ret"
    src = work / "model.safetensors"
    logical = 0
    for _ in range(SERIES_N):
        w += rng.standard_normal(n, dtype=np.float32) * 1e-4  # an optimizer step's drift
        src.write_bytes(safetensors(w))
        logical += src.stat().st_size
        sh("upload", src, "--project", "p", "--experiment", "run", "--prefix", "/ckpt", root=root)
    url, env = remote_url(work)
    sh("push", url, root=root, env=env)
    before = pack_bytes(root)
    dry = json.loads(sh("gc", "--keep-last", "3", "--dry-run", "--json", root=root))
    rep = json.loads(sh("gc", "--keep-last", "3", "--json", root=root))
    after = pack_bytes(root)
    assert json.loads(sh("verify", "--json", root=root))["ok"]
    sh("push", url, root=root, env=env)
    time.sleep(1.5)  # every pack older than the grace period
    mark = json.loads(sh("gc", url, "--grace", "1s", "--json", root=root, env=env))
    time.sleep(1.5)
    delete = json.loads(sh("gc", url, "--grace", "1s", "--json", root=root, env=env))
    left = json.loads(sh("gc", url, "--dry-run", "--json", root=root, env=env))
    fresh = work / "fresh"
    sh("pull", url, root=fresh, env=env)
    assert json.loads(sh("verify", "--json", root=fresh))["ok"]
    shutil.rmtree(fresh)
    return {
        "bucket_pack_bytes_before": mark["packBytes"],
        "bucket_marked": mark["bytesMarked"],
        "bucket_deleted": delete["bytesDeleted"],
        "bucket_rewritten_uploaded": mark["bytesUploaded"] + delete["bytesUploaded"],
        "bucket_pack_bytes_after": left["packBytes"],
        "bucket_live_bytes": left["liveBytes"],
        "versions": SERIES_N,
        "file_mib": SIZE_MIB,
        "logical_bytes": logical,
        "packs_before": before,
        "packs_after": after,
        "reclaimed": before - after,
        "dry_run_said": dry["reclaimedBytes"],
        "dropped": len(rep["retentionDropped"]),
        "kept_as_delta_bases": rep["keptAsDeltaBases"],
    }


def remote_url(work):
    env = dict(os.environ)
    genv = REPO / "target/garage/env"
    if genv.exists():
        for line in genv.read_text().splitlines():
            line = line.removeprefix("export ")
            if "=" in line:
                k, v = line.split("=", 1)
                env[k] = v.strip("'\"")
        bucket = env.get("ML_DASH_S3_BUCKET", "ml-dash-test")
        return f"s3://{bucket}/bench-lifecycle/{os.getpid()}-{time.time_ns()}", env
    return f"file://{work / 'remote'}", env


def lazy(work):
    src = work / "big.bin"
    with open(src, "wb") as f:
        for _ in range(1024):
            f.write(os.urandom(1 << 20))
    url, env = remote_url(work)
    a = work / "a"
    sh("upload", src, "--project", "p", "--experiment", "run", "--prefix", "/m", root=a)
    sh("push", url, env=env, root=a)
    lazy_t, pull_t = [], []
    for i in range(RUNS):
        b = work / f"lazy{i}"
        sync()
        t = time.perf_counter()
        sh("download", "--from", url, "--project", "p", "--experiment", "run", "/m/big.bin",
           "-o", work / "out1.bin", env=env, root=b)
        lazy_t.append(time.perf_counter() - t)
        c = work / f"pull{i}"
        sync()
        t = time.perf_counter()
        sh("pull", url, env=env, root=c)
        sh("download", "--project", "p", "--experiment", "run", "/m/big.bin", "-o", work / "out2.bin", root=c)
        pull_t.append(time.perf_counter() - t)
        shutil.rmtree(b)
        shutil.rmtree(c)
    return {"remote": url.split(":")[0], "lazy_s": min(lazy_t), "pull_plus_download_s": min(pull_t)}


def lazy_tensor(work):
    """Header and one 64 MiB tensor of a 1 GiB safetensors file on the remote, through
    `open_file(remote=)` in a fresh store (cold cache): time and bytes fetched."""
    n = 16 << 20  # float32 values per tensor: 64 MiB
    rng = np.random.default_rng(2)
    tensors = {f"layer{i}": rng.standard_normal(n, dtype=np.float32) for i in range(16)}
    meta, off = {}, 0
    for k, v in tensors.items():
        meta[k] = {"dtype": "F32", "shape": [n], "data_offsets": [off, off + v.nbytes]}
        off += v.nbytes
    header = json.dumps(meta).encode()
    header += b" " * (-len(header) % 8)
    src = work / "model.safetensors"
    with open(src, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        for v in tensors.values():
            f.write(v.tobytes())
    url, env = remote_url(work)
    os.environ.update({k: v for k, v in env.items() if k.startswith(("AWS_", "ML_DASH_S3"))})
    a = work / "ta"
    sh("upload", src, "--project", "p", "--experiment", "run", "--prefix", "/m", root=a)
    sh("push", url, env=env, root=a)
    times = []
    for i in range(RUNS):
        root = work / f"tl{i}"
        exp = ml_dash.Experiment(name="run", project="p", local_path=root).open()
        sync()
        t = time.perf_counter()
        with exp.open_file("/m/model.safetensors", remote=url, buffer_size=64 << 10) as f:
            hlen = int.from_bytes(f.read(8), "little")
            h = json.loads(f.read(hlen))
            lo, hi = h["layer7"]["data_offsets"]
            f.seek(8 + hlen + lo)
            got = f.read(hi - lo)
        times.append(time.perf_counter() - t)
        assert got == tensors["layer7"].tobytes()
        exp.close()
        shutil.rmtree(root)
    return {"tensor_mib": 64, "file_mib": 1024, "lazy_one_tensor_s": min(times)}


def background(work):
    src = work / "ckpt.pt"
    with open(src, "wb") as f:
        for _ in range(1024):
            f.write(os.urandom(1 << 20))
    fg, bg, bg_total = [], [], []
    for i in range(RUNS):
        for mode in ("fg", "bg"):
            root = work / f"bgstore-{mode}-{i}"
            exp = ml_dash.Experiment(name="run", project="p", local_path=root).open()
            sync()
            t = time.perf_counter()
            if mode == "fg":
                exp.file(src, prefix="/ckpt")
                fg.append(time.perf_counter() - t)
            else:
                h = exp.file(src, prefix="/ckpt", background=True)
                bg.append(time.perf_counter() - t)
                h.wait()
                bg_total.append(time.perf_counter() - t)
            exp.close()
            shutil.rmtree(root)
    return {"blocking_s": min(fg), "background_blocking_s": min(bg), "background_until_stored_s": min(bg_total)}


def main():
    work = Path(tempfile.mkdtemp(prefix="bench-lifecycle.", dir=REPO / "target"))
    try:
        parts = {"retention": retention, "lazy": lazy, "lazy_tensor": lazy_tensor, "background": background}
        only = os.environ.get("ONLY", "").split(",") if os.environ.get("ONLY") else list(parts)
        out = {name: parts[name](work) for name in only}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
