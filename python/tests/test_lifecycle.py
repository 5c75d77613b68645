"""Checkpoint lifecycle from Python: background uploads (handles, back-pressure, a writer
racing the upload, errors on close) and Ctrl-C interrupting long calls."""

import os
import signal
import subprocess
import threading
import time

import pytest

import ml_dash
from ml_dash import Experiment


def chunky(path, mib, seed):
    """A file of `mib` MiB that does not deduplicate against itself."""
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(mib):
            f.write(i.to_bytes(8, "little") + seed.to_bytes(8, "little") + block[16:])
    return path


def test_background_uploads_return_handles_and_close_waits(workdir):
    paths = [chunky(workdir / f"shard-{i}.bin", 8, i) for i in range(4)]
    with Experiment(name="e", project="p") as exp:
        handles = [exp.file(p, prefix="/ckpt", background=True) for p in paths]
        assert all(isinstance(h, ml_dash.Upload) for h in handles)
        first = handles[0].wait(timeout=60)
        assert first["filename"] == "shard-0.bin" and first["sizeBytes"] == 8 << 20
        assert handles[0].done() and handles[0].record["id"] == first["id"]
        assert handles[0].wait() == first  # the same record again
        # bad input is raised by the call itself, nothing queued
        with pytest.raises(FileNotFoundError):
            exp.file(workdir / "missing.bin", background=True)
        with pytest.raises(ValueError):
            exp.file(paths[0], prefix="/a/../b", background=True)
    # leaving the block waited for the rest
    assert all(h.done() for h in handles)
    with Experiment(name="e", project="p") as exp:
        assert sorted(r["filename"] for r in exp.files()) == [f"shard-{i}.bin" for i in range(4)]


def scribble(path, stop):
    with open(path, "r+b") as f:
        n = 0
        while not stop.is_set():
            f.seek((n * 7919 * 4096) % (os.path.getsize(path) - 4096))
            f.write(os.urandom(4096))
            f.flush()
            n += 1
            time.sleep(0.0002)


def test_a_writer_racing_a_background_upload_fails_it_loudly(workdir):
    p = chunky(workdir / "ckpt.pt", 96, 1)
    exp = Experiment(name="e", project="p").open()
    stop = threading.Event()
    h = exp.file(p, background=True)
    w = threading.Thread(target=scribble, args=(p, stop))
    w.start()
    try:
        with pytest.raises(OSError, match="modified in place"):
            h.wait()
    finally:
        stop.set()
        w.join()
    with pytest.raises(OSError, match="modified in place"):
        h.wait()  # raised again, never a record
    assert h.record is None
    # Not waited for: close raises it.
    stop = threading.Event()
    h = exp.file(p, background=True)
    w = threading.Thread(target=scribble, args=(p, stop))
    w.start()
    while not h.done():
        time.sleep(0.005)
    stop.set()
    w.join()
    with pytest.raises(OSError, match="modified in place"):
        exp.close()
    exp.close()
    assert Experiment(name="e", project="p").open().files(all_versions=True) == []


def interrupt_after(seconds):
    t = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    t.start()
    return t


def test_ctrl_c_interrupts_a_2_gib_upload_and_stores_nothing(workdir, cli):
    big = chunky(workdir / "big.bin", 2048, 3)
    with Experiment(name="e", project="p") as exp:
        exp.file(chunky(workdir / "small.bin", 1, 4))
        before = exp.files(all_versions=True)
        t0 = time.monotonic()
        interrupt_after(0.5)
        with pytest.raises(KeyboardInterrupt):
            exp.file(big, prefix="/models")
        took = time.monotonic() - t0
        assert took < 0.5 + 1.0, f"the upload stopped {took - 0.5:.2f} s after Ctrl-C"
        assert exp.files(all_versions=True) == before
        # the store works on: the same upload, not interrupted, succeeds
        assert exp.file(chunky(workdir / "next.bin", 2, 5))["version"] == 1
    [v] = cli("verify", "--json")
    assert v["ok"]
    assert not any(n.endswith(".incoming") for n in os.listdir(workdir / ".ml-dash" / "packs"))


def test_ctrl_c_interrupts_a_download_and_a_lock_wait(workdir):
    big = chunky(workdir / "big.bin", 1024, 6)
    with Experiment(name="e", project="p") as exp:
        exp.file(big)
        interrupt_after(0.2)
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            exp.download("/big.bin", workdir / "copy.bin")
        assert time.monotonic() - t0 < 1.2
        assert not (workdir / "copy.bin").exists()
        assert not [n for n in os.listdir(workdir) if n.startswith(".copy.bin.tmp")]

        # Another process holds the store lock: the upload waits, Ctrl-C ends the wait.
        holder = subprocess.Popen(["flock", str(workdir / ".ml-dash" / "lock"), "sleep", "30"])
        try:
            time.sleep(0.3)
            interrupt_after(0.3)
            t0 = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                exp.file(chunky(workdir / "small.bin", 1, 7))
            assert time.monotonic() - t0 < 1.3
        finally:
            holder.kill()
            holder.wait()
        assert [r["filename"] for r in exp.files()] == ["big.bin"]


def test_open_file_reads_a_remote_version_lazily(workdir):
    """torch.load-style access: seek to the end (zip directory), then read parts."""
    import zipfile

    remote = f"file://{workdir / 'remote'}"
    payload = {f"t{i}.bin": os.urandom(1 << 20) for i in range(6)}
    with zipfile.ZipFile(workdir / "ckpt.pt", "w", zipfile.ZIP_STORED) as z:
        for n, b in payload.items():
            z.writestr(n, b)
    with Experiment(name="e", project="p", local_path=workdir / "a", remote=remote) as exp:
        exp.file(workdir / "ckpt.pt", prefix="/models")
    # Another store, nothing pulled: read from the remote.
    exp = Experiment(name="e", project="p", local_path=workdir / "b").open()
    with exp.open_file("/models/ckpt.pt", remote=remote) as f:
        assert f.record["sizeBytes"] == (workdir / "ckpt.pt").stat().st_size
        with zipfile.ZipFile(f) as z:
            assert z.read("t3.bin") == payload["t3.bin"]
    assert exp.files() == []
    with pytest.raises(FileNotFoundError):
        exp.open_file("/models/missing.pt", remote=remote)


def test_a_checkpoint_directory_is_one_upload(workdir):
    d = workdir / "ckpt"
    (d / "tokenizer").mkdir(parents=True)
    (d / "config.json").write_text('{"layers": 2}')
    (d / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    for i in range(3):
        chunky(d / f"model-{i}.safetensors", 1, i)
    with Experiment(name="e", project="p") as exp:
        recs = exp.file(d, prefix="/checkpoints")
        assert [r["path"] + "/" + r["filename"] for r in recs] == [
            "/checkpoints/ckpt/config.json",
            "/checkpoints/ckpt/model-0.safetensors",
            "/checkpoints/ckpt/model-1.safetensors",
            "/checkpoints/ckpt/model-2.safetensors",
            "/checkpoints/ckpt/tokenizer/vocab.txt",
        ]
        assert exp.read_bytes("/checkpoints/ckpt/tokenizer/vocab.txt") == b"a\nb\n"
        with pytest.raises(ValueError, match="background"):
            exp.file(d, background=True)
