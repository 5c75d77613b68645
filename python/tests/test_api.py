"""The Python API beyond the ml-dash Files tutorial: return values, listing, reads, errors, the GIL, remotes."""

import io
import os
import pickle
import threading
import zipfile
from pathlib import Path

import pytest

import ml_dash
from ml_dash import Experiment, StoreError


def write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def test_record_dict_and_versions(workdir):
    with Experiment(name="e", project="p") as exp:
        f = write(workdir / "w.bin", os.urandom(100_000))
        r1 = exp.file(f, prefix="/models", tags=["a"], metadata={"k": [1, 2]})
        assert (r1["filename"], r1["path"], r1["sizeBytes"], r1["version"]) == ("w.bin", "/models", 100_000, 1)
        assert r1["metadata"] == {"k": [1, 2]} and r1["tags"] == ["a"]
        write(f, os.urandom(1000))
        r2 = exp.file(str(f), prefix="/models", name="w.bin")
        assert r2["version"] == 2
        assert exp.get("/models/w.bin", version=1)["checksum"] == r1["checksum"]
        assert [r["version"] for r in exp.files(all_versions=True)] == [1, 2]


def test_listing_filters_reads_download_and_delete(workdir):
    with Experiment(name="e", project="p") as exp:
        data = {}
        for name, prefix, tags in [("a.pth", "/models", ["best"]), ("b.pth", "/models/old", []),
                                   ("c.png", "/plots", ["plot"])]:
            data[name] = os.urandom(50_000)
            exp.file(write(workdir / name, data[name]), prefix=prefix, tags=tags)
        names = lambda rs: sorted(r["filename"] for r in rs)
        assert names(exp.files()) == ["a.pth", "b.pth", "c.png"]
        assert names(exp.files(prefix="/models")) == ["a.pth", "b.pth"]
        assert names(exp.files(glob="*.pth")) == ["a.pth", "b.pth"]
        assert names(exp.files(tags=["best"])) == ["a.pth"]
        assert exp.read_bytes("/plots/c.png") == data["c.png"]
        rec = exp.download("/models/old/b.pth", workdir / "out.bin")
        assert (workdir / "out.bin").read_bytes() == data["b.pth"] and rec["filename"] == "b.pth"
        with exp.open_file("/models/a.pth") as fh:
            assert fh.record["filename"] == "a.pth"
            assert fh.read(10) == data["a.pth"][:10]
            fh.seek(-5, io.SEEK_END)
            assert fh.read() == data["a.pth"][-5:]
            fh.seek(1000)
            assert fh.tell() == 1000 and fh.read(7) == data["a.pth"][1000:1007]
        deleted = exp.delete("/plots/c.png")
        assert [r["filename"] for r in deleted] == ["c.png"] and deleted[0]["deletedAt"]
        assert names(exp.files()) == ["a.pth", "b.pth"]
        with pytest.raises(FileNotFoundError):
            exp.read_bytes("/plots/c.png")
        up = exp.update("/models/a.pth", description="d", tags=["x"], metadata={"m": 1})
        assert (up["description"], up["tags"], up["metadata"]) == ("d", ["x"], {"m": 1})


def test_a_zip_checkpoint_loads_straight_from_the_store(workdir):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": list(range(10_000))}))
    with Experiment(name="e", project="p") as exp:
        exp.file(write(workdir / "ckpt.pth", buf.getvalue()), prefix="/ckpt")
        with zipfile.ZipFile(exp.open_file("/ckpt/ckpt.pth")) as z:
            assert pickle.loads(z.read("archive/data.pkl"))["w"][-1] == 9999


def test_readinto_fills_any_writable_buffer(workdir):
    import array

    data = os.urandom(3_000_000)
    with Experiment(name="e", project="p") as exp:
        exp.file(write(workdir / "w.bin", data), prefix="/m")
        raw = exp._reader("/m/w.bin")
        b = bytearray(1_000_001)
        assert raw.readinto(b) == len(b) and bytes(b) == data[:1_000_001]
        ints = array.array("i", [0] * 1000)  # counted in bytes, not items
        assert raw.readinto(ints) == 4000 and ints.tobytes() == data[1_000_001:1_004_001]
        big = bytearray(5_000_000)
        with memoryview(big) as m:
            assert raw.readinto(m[7:]) == len(data) - 1_004_001  # fewer only at the end
        assert big[7:7 + len(data) - 1_004_001] == data[1_004_001:] and big[:7] == bytes(7)
        assert raw.readinto(bytearray(10)) == 0
        raw.seek(0)
        with pytest.raises((BufferError, TypeError)):
            raw.readinto(b"read-only")
        with memoryview(bytearray(100)) as m, pytest.raises((BufferError, TypeError)):
            raw.readinto(m[::2])  # not contiguous
        assert raw.tell() == 0
        raw.close()
        with pytest.raises(ValueError):
            raw.readinto(bytearray(10))
        # The file object reads through it, a buffer of its own or the caller's.
        with exp.open_file("/m/w.bin", buffer_size=4096) as fh:
            out = bytearray(len(data))
            assert fh.readinto(out) == len(data) and out == data


def test_parameters_logs_and_metrics(workdir):
    with Experiment(name="e", project="p") as exp:
        assert exp.parameters().get() == {}
        p = exp.parameters().set(model={"depth": 50}, lr=0.1)
        assert p == {"model.depth": 50, "lr": 0.1}
        assert exp.parameters().set(lr=0.2)["lr"] == 0.2
        exp.log("hello")
        e = exp.log("careful", level="warn", metadata={"step": 3})
        assert (e["level"], e["metadata"]) == ("warn", {"step": 3})
        assert [l["message"] for l in exp.logs()] == ["hello", "careful"]
        m = exp.metric("loss")
        for i in range(3):
            m.append(value=1.0 / (i + 1), epoch=i)
        pts = m.points()
        assert [pt["data"]["epoch"] for pt in pts] == [0, 1, 2]


def test_errors_are_python_exceptions(workdir):
    with pytest.raises(ValueError):
        Experiment(name="../x", project="p")
    with pytest.raises(ValueError):
        Experiment(name="e", project="p", remote="ftp://not-s3/x")
    with pytest.raises(ValueError):
        Experiment(name="..", project="p", remote="http://127.0.0.1:9")
    with Experiment(name="e", project="p") as exp:
        f = write(workdir / "f.bin", b"x" * 100)
        with pytest.raises(FileNotFoundError):
            exp.file(workdir / "missing.bin")
        with pytest.raises(ValueError):
            exp.file(f, prefix="/a/../b")
        with pytest.raises(ValueError):
            exp.file(f, metadata=[1, 2])  # metadata must be an object
        with pytest.raises(ValueError):
            exp.file(f, metadata={"x": object()})
        with pytest.raises(FileNotFoundError):
            exp.get("/nothing/here.bin")
        with pytest.raises(FileNotFoundError):
            exp.open_file("/nothing.bin")
        with pytest.raises(ValueError):
            exp.files(glob="[")
    assert exp.files is not None
    with pytest.raises(ValueError):
        exp.files()  # closed
    exp.open()
    assert len(exp.files()) == 0
    exp.close()


def store_damaged(workdir: Path, size: int) -> bytes:
    """Store `size` random bytes as /d.bin, then flip a bit in the middle of the pack."""
    payload = os.urandom(size)
    with Experiment(name="e", project="p") as exp:
        exp.file(write(workdir / "d.bin", payload))
    pack = next((workdir / ".ml-dash" / "packs").glob("*.pack"))
    b = bytearray(pack.read_bytes())
    b[len(b) // 2] ^= 0x20
    pack.write_bytes(bytes(b))
    return payload


def test_damaged_data_raises_store_error_never_wrong_bytes(workdir):
    store_damaged(workdir, 400_000)
    with Experiment(name="e", project="p") as exp:
        with pytest.raises(StoreError):
            exp.read_bytes("/d.bin")
        with pytest.raises(StoreError):
            with exp.open_file("/d.bin") as fh:
                fh.read()
        with pytest.raises(StoreError):
            exp.download("/d.bin", workdir / "out.bin")
        assert not (workdir / "out.bin").exists()


def test_readinto_stops_at_a_damaged_chunk_with_the_good_bytes(workdir):
    payload = store_damaged(workdir, 3_000_000)
    with Experiment(name="e", project="p") as exp:
        raw = exp._reader("/d.bin")
        buf = bytearray(len(payload))
        n = raw.readinto(buf)
        assert 0 < n < len(payload) and buf[:n] == payload[:n]
        assert buf[n:] == bytes(len(payload) - n), "bytes of the damaged chunk reached the buffer"
        assert raw.tell() == n
        with pytest.raises(StoreError):
            raw.readinto(buf)
        with pytest.raises(StoreError), exp.open_file("/d.bin") as fh:
            fh.readinto(bytearray(len(payload)))
            fh.read(1)


def test_ingest_releases_the_gil(workdir):
    big = write(workdir / "big.bin", os.urandom(96 << 20))
    ticks = 0
    done = threading.Event()

    def upload():
        with Experiment(name="e", project="p") as exp:
            exp.file(big)
        done.set()

    t = threading.Thread(target=upload)
    t.start()
    while not done.is_set():
        ticks += 1
    t.join()
    # With the GIL held through the upload this loop could not run while it lasted.
    assert ticks > 1000, ticks


def test_push_on_close_and_pull_with_the_cli(workdir, cli):
    remote = f"file://{workdir / 'remote'}"
    with Experiment(name="e", project="p", remote=remote) as exp:
        exp.file(write(workdir / "m.bin", os.urandom(70_000)), prefix="/m")
    # Leaving the block pushed; another machine pulls it.
    cli("pull", remote, "--json", root=workdir / "other")
    recs = cli("list", "--json", root=workdir / "other")
    assert [r["filename"] for r in recs] == ["m.bin"]


@pytest.mark.skipif(os.environ.get("ML_DASH_S3_TEST") != "1", reason="no S3 server (.ci/run starts Garage)")
def test_push_on_close_to_garage(workdir, cli):
    url = f"s3://{os.environ['ML_DASH_S3_BUCKET']}/py/{os.getpid()}-{os.urandom(4).hex()}"
    with Experiment(name="e", project="p", remote=url) as exp:
        exp.file(write(workdir / "m.bin", os.urandom(70_000)), prefix="/m")
    cli("pull", url, "--json", root=workdir / "other")
    assert [r["filename"] for r in cli("list", "--json", root=workdir / "other")] == ["m.bin"]


def test_glob_table_shared_with_the_engine_and_the_cli(workdir):
    """`files(glob=...)` follows the same table as `ml-dash list --glob` and the engine."""
    import json

    table = json.loads((Path(__file__).resolve().parents[2] / "tests" / "data" / "glob_table.json").read_text())
    with Experiment(name="e", project="p") as exp:
        for p in table["paths"]:
            d, name = p.rsplit("/", 1)
            src = workdir / "src" / name
            src.parent.mkdir(exist_ok=True)
            src.write_bytes(d.encode())
            exp.file(src, prefix=d or "/")
        for case in table["cases"]:
            got = sorted(r["path"].rstrip("/") + "/" + r["filename"] if r["path"] != "/" else "/" + r["filename"]
                         for r in exp.files(glob=case["glob"]))
            assert got == sorted(case["matches"]), case["glob"]
        for bad in table["invalid"]:
            with pytest.raises(ValueError):
                exp.files(glob=bad)


def test_keep_last_and_keep_tags_store_a_retention_policy(workdir, cli):
    with Experiment(name="e", project="p", keep_last=2, keep_tags=["best"]) as exp:
        f = workdir / "ckpt.pt"
        recs = []
        for i in range(6):
            write(f, bytes([i]) * 50_000)
            recs.append(exp.file(f, prefix="/ckpt", tags=["best"] if i == 1 else None))
        dry = exp.gc(dry_run=True)
        assert dry["dryRun"] and [r["version"] for r in dry["retentionDropped"]] == [1, 3, 4]
        assert dry["garbageBytes"] > 0  # small packs below the rewrite threshold stay
        assert len(exp.files(all_versions=True)) == 6
        rep = exp.gc()
        assert len(rep["retentionDropped"]) == 3
        assert [r["version"] for r in exp.files(all_versions=True)] == [2, 5, 6]
        for r in exp.files(all_versions=True):
            assert exp.read_bytes("/ckpt/ckpt.pt", version=r["version"]) == bytes([r["version"] - 1]) * 50_000
    [shown] = cli("retention", "show", "--json")
    assert shown[0]["policy"] == {"keepLast": 2, "keepTags": ["best"]}
    assert shown[0]["scope"] == {"namespace": "local", "project": "p", "experiment": "e"}
    with pytest.raises(ValueError):
        Experiment(name="e", project="p", keep_last=0)
    with pytest.raises(ValueError):
        Experiment(name="e", project="p", remote="http://127.0.0.1:1", keep_last=1)
