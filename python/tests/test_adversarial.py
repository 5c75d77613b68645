"""Adversarial tests of the Python module: crashes, deadlocks between Python threads, exception
types, `io` file-object conventions, JSON round-trips, lifecycle without `with`, and the
stubs against the implementation.

Tests that could crash or hang the interpreter run their body in a child Python, so a
regression fails that one test (a child that aborts or deadlocks) instead of the whole run.
The child's timeout only detects a hang; nothing here asserts how long anything takes."""

import array
import ast
import inspect
import io
import math
import os
import pathlib
import pickle
import random
import shutil
import subprocess
import sys
import textwrap
import threading
import zipfile
from pathlib import Path

import pytest

import ml_dash
from ml_dash import Experiment

HANG = 60  # seconds before a child counts as deadlocked (each child needs well under 5)


def run_child(code: str, cwd: Path, *args: str):
    """Run `code` in a fresh interpreter; fail on a crash (signal), an error or a hang."""
    try:
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=cwd,
                             capture_output=True, text=True, timeout=HANG)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"child deadlocked (killed after {HANG} s); stderr: {e.stderr!r}")
    assert out.returncode == 0, f"rc={out.returncode}\nstdout: {out.stdout}\nstderr: {out.stderr[-3000:]}"
    return out.stdout


def multi_chunk_bytes(n=1_500_000, seed=1) -> bytes:
    """Random bytes (several chunks; zstd will not shrink them)."""
    return random.Random(seed).randbytes(n)


@pytest.fixture
def stored(workdir):
    """A store holding /d/data.bin (multi-chunk) and its bytes."""
    data = multi_chunk_bytes()
    (workdir / "data.bin").write_bytes(data)
    with Experiment(name="e", project="p") as exp:
        exp.file(workdir / "data.bin", prefix="/d")
    return data


# --- Crashes and deadlocks -------------------------------------------------------------------


def test_reader_read_of_a_huge_count_returns_what_is_there_instead_of_aborting(stored, workdir):
    # The count is an upper bound: allocating it up front aborted the interpreter.
    out = run_child("""
        from ml_dash import Experiment
        r = Experiment(name="e", project="p")._reader("/d/data.bin")
        r.seek(r.size() - 10)
        print(len(r.read(1 << 60)), len(r.read(1 << 60)))
    """, workdir)
    assert out.split() == ["10", "0"]


def test_one_raw_reader_shared_by_two_threads_does_not_deadlock(stored, workdir):
    # A thread holding the reader's lock while the GIL was released, and another thread waiting
    # for that lock while holding the GIL, deadlocked the process.
    out = run_child("""
        import threading
        from ml_dash import Experiment
        r = Experiment(name="e", project="p")._reader("/d/data.bin")
        size = r.size()
        errors = []
        def hammer(k):
            try:
                for i in range(2000):
                    r.seek((i * 7919 * (k + 1)) % size)
                    r.read(100)
                    r.tell()
                    r.size()
            except BaseException as e:
                errors.append(e)
        ts = [threading.Thread(target=hammer, args=(k,)) for k in range(3)]
        for t in ts: t.start()
        for t in ts: t.join()
        assert not errors, errors
        print("done")
    """, workdir)
    assert out.strip() == "done"


def test_closing_a_raw_reader_while_another_thread_reads_it(stored, workdir):
    out = run_child("""
        import threading
        from ml_dash import Experiment
        exp = Experiment(name="e", project="p")
        outcomes = set()
        for round in range(30):
            r = exp._reader("/d/data.bin")
            started = threading.Event()
            def reader():
                try:
                    while True:
                        r.seek(0)
                        r.read(200_000)
                        started.set()
                except ValueError:  # closed under it: the io convention
                    outcomes.add("closed")
                    started.set()
            t = threading.Thread(target=reader)
            t.start()
            started.wait()
            r.close()
            t.join()
        assert outcomes == {"closed"}, outcomes
        print("done")
    """, workdir)
    assert out.strip() == "done"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_first_use_of_one_experiment_from_two_threads_does_not_deadlock(workdir):
    # The experiment opened its store (waiting for the store lock, GIL released) while holding
    # its own mutex; a second thread waiting for that mutex with the GIL held blocked the first
    # thread's return forever. The child holds the store lock itself, waits until both threads
    # are inside the store open (each has the lock file open), then lets them go.
    out = run_child("""
        import fcntl, os, threading
        from ml_dash import Experiment
        os.mkdir("s")
        lock = open("s/lock", "a+")
        fcntl.flock(lock, fcntl.LOCK_EX)
        target = os.path.realpath("s/lock")
        def lock_fds():
            n = 0
            for fd in os.listdir("/proc/self/fd"):
                try:
                    n += os.readlink(f"/proc/self/fd/{fd}") == target
                except OSError:
                    pass
            return n
        exp = Experiment(name="e", project="p", local_path="s")
        results = []
        ts = [threading.Thread(target=lambda: results.append(exp.files())) for _ in range(2)]
        for k, t in enumerate(ts):
            t.start()
            while lock_fds() < k + 2:
                os.sched_yield()
        fcntl.flock(lock, fcntl.LOCK_UN)
        for t in ts: t.join()
        assert results == [[], []], results
        print("done")
    """, workdir)
    assert out.strip() == "done"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_process_forked_after_store_use_gets_an_error_not_a_hang(stored, workdir):
    # sled's and rayon's threads do not survive fork: a store call in such a child waited
    # forever (a DataLoader worker, multiprocessing with "fork"). Journals and readers opened
    # before the fork need neither and keep working. An alarm ends a hung child.
    out = run_child("""
        import os, signal, warnings
        import ml_dash
        from ml_dash import Experiment
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        exp = Experiment(name="e", project="p")
        data = exp.read_bytes("/d/data.bin")
        fh = exp.open_file("/d/data.bin")
        pid = os.fork()
        if pid == 0:
            signal.alarm(30)
            try:
                exp.files()
            except ml_dash.StoreError as e:
                assert "forked" in str(e), e
            else:
                os._exit(3)
            exp.log("from the child")
            exp.metric("m").append(value=1)
            assert fh.read() == data
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert status == 0, f"child status {status:#x} (signal 14: it hung)"
        assert [l["message"] for l in exp.logs()] == ["from the child"]
        assert len(exp.files()) == 1  # the parent still works
        print("done")
    """, workdir)
    assert out.strip() == "done"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_reader_forked_while_it_decodes_ahead_reads_on_in_the_child(workdir):
    # A reader that streams decodes the next batch on the thread pool; a child forked then
    # has no pool threads to finish it and must decode what it reads itself.
    (workdir / "big.bin").write_bytes(multi_chunk_bytes(12_000_000, seed=4))
    out = run_child("""
        import os, signal, warnings
        from ml_dash import Experiment
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        data = open("big.bin", "rb").read()
        exp = Experiment(name="e", project="p")
        exp.file("big.bin", prefix="/d")
        for round in range(5):
            fh = exp.open_file("/d/big.bin", buffer_size=4096)
            head = fh.read(100_000) + fh.read(100_000)  # streaming: a batch is decoded ahead
            pid = os.fork()
            if pid == 0:
                signal.alarm(30)
                ok = head + fh.read() == data
                os._exit(0 if ok else 3)
            _, status = os.waitpid(pid, 0)
            assert status == 0, f"child status {status:#x} (signal 14: it hung)"
            assert head + fh.read() == data  # the parent's reader is unaffected
        print("done")
    """, workdir)
    assert out.strip() == "done"


def test_parameters_and_metrics_from_many_threads_on_one_experiment(workdir):
    n_threads, n_each = 4, 8
    errors = []
    with Experiment(name="e", project="p") as exp:
        def work(k):
            try:
                for i in range(n_each):
                    src = workdir / f"t{k}-{i}.bin"
                    src.write_bytes(f"{k}/{i}".encode() * 100)
                    exp.file(src, prefix=f"/t{k}")
                    exp.file(src, prefix="/shared", name="same.bin")
                    exp.metric("m").append(value=k * 1000 + i, thread=k)
                    exp.log(f"{k}:{i}")
                    exp.parameters().set(**{f"k{k}": i})
                    assert exp.read_bytes(f"/t{k}/t{k}-{i}.bin") == src.read_bytes()
            except BaseException as e:
                errors.append(e)
        ts = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
        for t in ts: t.start()
        for t in ts: t.join()
        assert not errors, errors
        versions = [r["version"] for r in exp.files(prefix="/shared", all_versions=True)]
        assert sorted(versions) == list(range(1, n_threads * n_each + 1))
        assert len(exp.files()) == n_threads * n_each + 1
        values = sorted(p["data"]["value"] for p in exp.metric("m").points())
        assert values == sorted(k * 1000 + i for k in range(n_threads) for i in range(n_each))
        assert len(exp.logs()) == n_threads * n_each
        assert exp.parameters().get() == {f"k{k}": n_each - 1 for k in range(n_threads)}


# --- The file object of open_file ------------------------------------------------------------


def test_file_object_follows_io_conventions(stored, workdir):
    data = stored
    with Experiment(name="e", project="p") as exp:
        fh = exp.open_file("/d/data.bin", buffer_size=4096)
        assert fh.readable() and fh.seekable() and not fh.writable()
        assert fh.read(0) == b"" and fh.tell() == 0
        assert fh.read(-1) == data
        assert fh.read() == b"" and fh.read(10) == b""  # at the end
        fh.seek(0)
        assert fh.read(None) == data
        # Seeks: past the end, from the end, relative; a bad seek leaves the position alone.
        assert fh.seek(len(data) + 1000) == len(data) + 1000
        assert fh.read(5) == b"" and fh.tell() == len(data) + 1000
        assert fh.seek(-7, io.SEEK_END) == len(data) - 7 and fh.read() == data[-7:]
        fh.seek(100)
        assert fh.seek(50, io.SEEK_CUR) == 150
        with pytest.raises((ValueError, OSError)):
            fh.seek(-1)
        with pytest.raises((ValueError, OSError)):
            fh.seek(-1_000, io.SEEK_CUR)
        assert fh.tell() == 150 and fh.read(3) == data[150:153]
        # readinto: memoryviews (sliced), bytearrays, other item sizes.
        buf = bytearray(100)
        fh.seek(1000)
        assert fh.readinto(memoryview(buf)[10:30]) == 20 and bytes(buf[10:30]) == data[1000:1020]
        assert buf[:10] == bytes(10) and buf[30:] == bytes(70)
        ints = array.array("i", [0] * 16)
        assert fh.readinto(ints) == 16 * ints.itemsize
        assert ints.tobytes() == data[1020:1020 + 16 * ints.itemsize]
        # Random access across chunk boundaries, buffered and unbuffered.
        rnd = random.Random(3)
        for _ in range(200):
            off, n = rnd.randrange(len(data) + 10), rnd.randrange(1, 70_000)
            fh.seek(off)
            assert fh.read(n) == data[off:off + n]
        fh.close()
        fh.close()  # twice is fine
        assert fh.closed
        for op in [fh.read, lambda: fh.seek(0), fh.tell, fh.readline, lambda: fh.readinto(bytearray(1))]:
            with pytest.raises(ValueError):
                op()


def test_raw_file_readinto_counts_bytes_not_items(stored, workdir):
    with Experiment(name="e", project="p") as exp:
        with exp.open_file("/d/data.bin") as fh:
            raw = fh.raw
            ints = array.array("i", [0] * 10)
            assert raw.readinto(ints) == 10 * ints.itemsize
            assert ints.tobytes() == stored[:10 * ints.itemsize]
            assert raw.readall() == stored[10 * ints.itemsize:]
            assert raw.read(10) == b""


def test_reader_read_accepts_minus_one_and_none_and_size_refuses_when_closed(stored, workdir):
    with Experiment(name="e", project="p") as exp:
        r = exp._reader("/d/data.bin")
        assert r.size() == len(stored)
        assert r.read(0) == b"" and r.tell() == 0
        r.seek(10)
        assert r.read(-1) == stored[10:]
        r.seek(len(stored) - 3)
        assert r.read(None) == stored[-3:] and r.read() == b""
        r.close()
        r.close()
        for op in [r.size, r.tell, lambda: r.read(1), lambda: r.seek(0)]:
            with pytest.raises(ValueError):
                op()


def test_lines_text_pickle_copyfileobj_and_zip_through_the_file_object(workdir):
    lines = [f"line {i} " + "é" * (i % 7) + "\n" for i in range(20_000)]
    text = "".join(lines).encode()
    obj = {"w": [random.Random(2).random() for _ in range(50_000)], "s": "ü" * 1000}
    zbuf = io.BytesIO()
    members = {f"m{i}.bin": multi_chunk_bytes(70_000 + i, seed=i) for i in range(8)}
    with zipfile.ZipFile(zbuf, "w", compression=zipfile.ZIP_STORED) as z:
        for name, b in members.items():
            z.writestr(name, b)
    for name, b in [("t.txt", text), ("o.pkl", pickle.dumps(obj)), ("z.zip", zbuf.getvalue())]:
        (workdir / name).write_bytes(b)
    with Experiment(name="e", project="p") as exp:
        for name in ["t.txt", "o.pkl", "z.zip"]:
            exp.file(workdir / name)
        with exp.open_file("/t.txt") as fh:
            assert fh.readline() == lines[0].encode()
            assert fh.readline(3) == lines[1].encode()[:3]
            assert list(fh) == [lines[1].encode()[3:]] + [l.encode() for l in lines[2:]]
        with io.TextIOWrapper(exp.open_file("/t.txt"), encoding="utf-8") as t:
            assert t.readlines() == lines
        with exp.open_file("/o.pkl") as fh:
            assert pickle.load(fh) == obj
            assert fh.read() == b""
        out = io.BytesIO()
        with exp.open_file("/t.txt") as fh:
            shutil.copyfileobj(fh, out, 777)
        assert out.getvalue() == text
        with zipfile.ZipFile(exp.open_file("/z.zip")) as z:
            for name in reversed(list(members)):  # seek-heavy: members in reverse order
                assert z.read(name) == members[name]


def test_empty_file_reads_as_empty(workdir):
    (workdir / "empty.bin").write_bytes(b"")
    with Experiment(name="e", project="p") as exp:
        assert exp.file(workdir / "empty.bin")["sizeBytes"] == 0
        with exp.open_file("/empty.bin") as fh:
            assert fh.read() == b"" and fh.seek(0, io.SEEK_END) == 0 and fh.readline() == b""
        assert exp.read_bytes("/empty.bin") == b""


# --- JSON round trips ------------------------------------------------------------------------

ROUND_TRIP = {
    "nested": {"a": {"b": {"c": [1, {"d": None}, [], {}]}}},
    "floats": [0.1, 0.1 + 0.2, 1e-310, 5e-324, 1.7976931348623157e308, -0.0, 1.0, 3.0e20],
    "ints": [0, -1, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1],
    "bools": [True, False],
    "none": None,
    "unicode": "h\u00e9llo \u4e16\u754c \U0001F600 e\u0301 \u200b\\\"'",
    "\u00fcml\u00e4ut \U0001F680": "key with unicode",
    "empty": "",
}


def same_json(a, b):
    """Equal, with the same types (True is not 1, 1.0 is not 1) and the sign of zero."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


def test_metadata_round_trips_exactly(workdir):
    src = workdir / "f.bin"
    src.write_bytes(b"x")
    tup = {"t": (1, 2)}
    with Experiment(name="e", project="p") as exp:
        assert same_json(exp.file(src, metadata=ROUND_TRIP)["metadata"], ROUND_TRIP)
        assert same_json(exp.log("m", metadata=ROUND_TRIP)["metadata"], ROUND_TRIP)
        assert exp.update("/f.bin", metadata=tup)["metadata"] == {"t": [1, 2]}
        exp.update("/f.bin", metadata=ROUND_TRIP, description="d\u00e9 \U0001F600")
        assert exp.metric("m").append(**ROUND_TRIP)["data"]["floats"][2] == 1e-310
    with Experiment(name="e", project="p") as exp:  # as stored, read back fresh
        rec = exp.get("/f.bin")
        assert same_json(rec["metadata"], ROUND_TRIP) and rec["description"] == "d\u00e9 \U0001F600"
        assert same_json(exp.logs()[0]["metadata"], ROUND_TRIP)
        data = exp.metric("m").points()[0]["data"]
        assert same_json({k: data[k] for k in ROUND_TRIP}, ROUND_TRIP)
        p = exp.parameters().set(cfg={"lr": 0.1 + 0.2, "name": "\U0001F600", "opt": None, "deep": {"x": -0.0}})
        assert same_json(p, {"cfg.deep.x": -0.0, "cfg.lr": 0.1 + 0.2, "cfg.name": "\U0001F600", "cfg.opt": None})


@pytest.mark.parametrize("bad", [2**64, -(2**63) - 1, 10**30])
def test_integers_beyond_64_bits_are_refused_not_rounded(workdir, bad):
    src = workdir / "f.bin"
    src.write_bytes(b"x")
    with Experiment(name="e", project="p") as exp:
        with pytest.raises(ValueError):
            exp.file(src, metadata={"seed": bad})
        with pytest.raises(ValueError):
            exp.metric("m").append(value=bad)
        with pytest.raises(ValueError):
            exp.parameters().set(nested={"seed": [bad]})
        with pytest.raises(ValueError):
            exp.log("x", metadata={"n": bad})
        assert exp.files() == [] and exp.metric("m").points() == [] and exp.logs() == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_floats_are_value_errors(workdir, bad):
    with Experiment(name="e", project="p") as exp:
        with pytest.raises(ValueError):
            exp.metric("m").append(value=bad)
        with pytest.raises(ValueError):
            exp.log("x", metadata={"v": [bad]})
        with pytest.raises(ValueError):
            exp.parameters().set(v=bad)


# --- Exception types -------------------------------------------------------------------------


def test_bad_versions_are_value_errors_and_absent_ones_not_found(stored, workdir):
    with Experiment(name="e", project="p") as exp:
        for bad in [-1, 2**32, 2**70]:
            for call in [lambda: exp.get("/d/data.bin", version=bad),
                         lambda: exp.read_bytes("/d/data.bin", version=bad),
                         lambda: exp.open_file("/d/data.bin", version=bad),
                         lambda: exp.download("/d/data.bin", workdir / "o", version=bad)]:
                with pytest.raises(ValueError):
                    call()
        with pytest.raises(TypeError):
            exp.get("/d/data.bin", version="1")
        for v in [0, 2, 2**32 - 1]:
            with pytest.raises(FileNotFoundError):
                exp.get("/d/data.bin", version=v)
        assert exp.get("/d/data.bin", version=1)["version"] == 1
        assert not (workdir / "o").exists()


def test_bad_input_and_missing_things_raise_the_documented_types(stored, workdir):
    (workdir / "adir").mkdir()
    with Experiment(name="e", project="p") as exp:
        for call in [lambda: exp.get("no-leading-slash.bin"), lambda: exp.get("/"),
                     lambda: exp.file(workdir / "adir"), lambda: exp.log("x", level="loud"),
                     lambda: exp.metric("").append(value=1), lambda: exp.metric("a//b").append(value=1),
                     lambda: exp.file(workdir / "adir", name="../x"), lambda: exp.files(glob="a[")]:
            with pytest.raises(ValueError):
                call()
        for call in [lambda: exp.get("/d/nothing.bin"), lambda: exp.delete("/nothing"),
                     lambda: exp.update("/nothing.bin", description="x"),
                     lambda: exp.file(workdir / "missing.bin"),
                     lambda: exp.download("/d/data.bin", workdir / "no" / "such" / "dir.bin")]:
            with pytest.raises(FileNotFoundError):
                call()
        (workdir / "afile").write_bytes(b"")
        with pytest.raises(OSError):
            exp.download("/d/data.bin", workdir / "afile" / "x.bin")  # parent is a file
    (workdir / "notadir").write_bytes(b"")
    with pytest.raises(ml_dash.StoreError):
        Experiment(name="e", project="p", local_path=workdir / "notadir").files()


# --- Lifecycle without `with` ----------------------------------------------------------------


def test_lifecycle_without_with(workdir):
    src = workdir / "f.bin"
    src.write_bytes(b"abc")
    exp = Experiment(name="e", project="p")
    assert exp.file(src)["version"] == 1  # first use opens the store
    params, metric = exp.parameters(), exp.metric("m")
    metric.append(value=1)
    assert exp.close() is None
    assert exp.close() is None  # twice is fine
    for call in [exp.files, lambda: exp.file(src), lambda: exp.get("/f.bin"), exp.logs,
                 lambda: exp.read_bytes("/f.bin"), lambda: exp.open_file("/f.bin"),
                 lambda: exp.log("x"), params.get, lambda: params.set(a=1),
                 lambda: metric.append(value=2), metric.points, lambda: exp.delete("/f.bin")]:
        with pytest.raises(ValueError):
            call()
    assert exp.open() is exp
    assert exp.read_bytes("/f.bin") == b"abc" and [p["data"]["value"] for p in metric.points()] == [1]
    exp.close()
    with exp:  # re-entering the same object
        assert len(exp.files()) == 1


def test_an_exception_in_the_block_propagates_and_closes(workdir):
    with pytest.raises(KeyError):
        with Experiment(name="e", project="p") as exp:
            raise KeyError("boom")
    with pytest.raises(ValueError):
        exp.files()
    # The protocol's own names work as keywords.
    exp.open()
    assert exp.__exit__(exc_type=None, exc=None, tb=None) is False
    with pytest.raises(ValueError):
        exp.files()


def test_closing_an_unused_experiment_creates_no_store(workdir):
    exp = Experiment(name="e", project="p", local_path=workdir / "never")
    assert exp.close() is None
    assert not (workdir / "never").exists()


def test_a_later_chdir_does_not_move_the_experiment_to_another_store(workdir, monkeypatch):
    (workdir / "a").mkdir()
    (workdir / "b").mkdir()
    src = workdir / "f.bin"
    src.write_bytes(b"abc")
    monkeypatch.chdir(workdir / "a")
    with Experiment(name="e", project="p", local_path=".ml-dash") as exp:
        exp.file(src, prefix="/one")
        monkeypatch.chdir(workdir / "b")  # e.g. a framework that changes directory per run
        exp.file(src, prefix="/two")
        exp.log("after chdir")
        exp.parameters().set(x=1)
        assert sorted(r["path"] for r in exp.files()) == ["/one", "/two"]
    assert not (workdir / "b" / ".ml-dash").exists()
    assert exp.local_path == Path(".ml-dash")  # as given
    with Experiment(name="e", project="p", local_path=workdir / "a" / ".ml-dash") as again:
        assert len(again.files()) == 2 and [l["message"] for l in again.logs()] == ["after chdir"]


def test_a_store_recreated_at_the_same_path_does_not_see_the_old_journal(workdir):
    with Experiment(name="e", project="p") as exp:
        for i in range(5):
            exp.metric("m").append(value=i)
        exp.log("old")
    shutil.rmtree(workdir / ".ml-dash")
    with Experiment(name="e", project="p") as exp:
        assert exp.metric("m").append(value=100)["index"] == 0
        assert len(exp.metric("m").points()) == 1 and exp.logs() == []


def test_handles_keep_their_experiment_alive(workdir):
    exp = Experiment(name="e", project="p")
    params, metric = exp.parameters(), exp.metric("m")
    del exp
    params.set(a=1)
    metric.append(value=1)
    assert params.get() == {"a": 1} and len(metric.points()) == 1


# --- Stubs against the implementation --------------------------------------------------------

STUB = Path(ml_dash.__file__).with_name("__init__.pyi")


def stub_classes():
    tree = ast.parse(STUB.read_text())
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def is_property(fn: ast.FunctionDef) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "property" for d in fn.decorator_list)


def stub_params(fn: ast.FunctionDef):
    """[(name, kind, default)] as inspect would see them; default `...` means "any"."""
    a = fn.args
    pos = a.posonlyargs + a.args
    defaults = [inspect.Parameter.empty] * (len(pos) - len(a.defaults)) + list(a.defaults)
    out = []
    for arg, d in zip(pos, defaults):
        if d is not inspect.Parameter.empty:
            d = ... if isinstance(d, ast.Constant) and d.value is ... else ast.literal_eval(d)
        kind = inspect.Parameter.POSITIONAL_ONLY if arg in a.posonlyargs else inspect.Parameter.POSITIONAL_OR_KEYWORD
        out.append((arg.arg, kind, d))
    if a.vararg:
        out.append((a.vararg.arg, inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.empty))
    for arg, d in zip(a.kwonlyargs, a.kw_defaults):
        out.append((arg.arg, inspect.Parameter.KEYWORD_ONLY,
                    inspect.Parameter.empty if d is None else ast.literal_eval(d)))
    if a.kwarg:
        out.append((a.kwarg.arg, inspect.Parameter.VAR_KEYWORD, inspect.Parameter.empty))
    return out[1:] if out and out[0][0] in ("self", "cls") else out


def runtime_params(obj):
    ps = list(inspect.signature(obj).parameters.values())
    if ps and ps[0].name == "self":
        ps = ps[1:]
    kind = lambda p: (inspect.Parameter.POSITIONAL_OR_KEYWORD
                      if p.kind is inspect.Parameter.POSITIONAL_ONLY else p.kind)
    return [(p.name, kind(p), p.default) for p in ps]


def test_every_stub_signature_matches_the_implementation():
    mismatches = []
    for cname, cls in stub_classes().items():
        if cname.startswith("_"):
            continue  # typing-only (e.g. what open_file returns)
        rt = getattr(ml_dash, cname)
        stubbed = set()
        for fn in cls.body:
            if not isinstance(fn, ast.FunctionDef):
                continue
            stubbed.add(fn.name)
            attr = inspect.getattr_static(rt, fn.name, None)
            if attr is None:
                mismatches.append(f"{cname}.{fn.name}: not in the module")
                continue
            if is_property(fn):
                if callable(getattr(rt, fn.name)):
                    mismatches.append(f"{cname}.{fn.name}: a method, stubbed as a property")
                continue
            target = rt if fn.name in ("__init__", "__new__") else getattr(rt, fn.name)
            want, got = stub_params(fn), runtime_params(target)
            if [w[:2] for w in want] != [g[:2] for g in got]:
                mismatches.append(f"{cname}.{fn.name}: stub {want} != runtime {got}")
                continue
            for (n, _, sd), (_, _, rd) in zip(want, got):
                if sd is not ... and sd != rd:
                    mismatches.append(f"{cname}.{fn.name}({n}): stub default {sd!r} != {rd!r}")
        public = {n for n in dir(rt) if not n.startswith("_")} - set(dir(BaseException))
        if missing := public - stubbed:
            mismatches.append(f"{cname}: not in the stub: {sorted(missing)}")
    assert not mismatches, "\n".join(mismatches)


def test_stub_property_types_match_what_the_properties_return(stored, workdir):
    """Each property stubbed with a plain type name returns an instance of that type."""
    types = {"str": str, "int": int, "Path": pathlib.Path, "Record": dict, "bool": bool}
    with Experiment(name="e", project="p") as exp:
        instances = {"Experiment": exp, "Metric": exp.metric("m"), "Reader": exp._reader("/d/data.bin")}
        wrong = []
        for cname, cls in stub_classes().items():
            for fn in cls.body:
                if isinstance(fn, ast.FunctionDef) and is_property(fn) and cname in instances:
                    ann = ast.unparse(fn.returns)
                    assert ann in types, f"{cname}.{fn.name} -> {ann}: teach this test the type"
                    value = getattr(instances[cname], fn.name)
                    if not isinstance(value, types[ann]):
                        wrong.append(f"{cname}.{fn.name}: stub {ann}, returns {type(value).__name__}")
        assert not wrong, wrong


def test_module_exports_are_all_stubbed():
    tree = ast.parse(STUB.read_text())
    names = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    names |= {t.id for n in tree.body if isinstance(n, (ast.AnnAssign, ast.Assign))
              for t in ([n.target] if isinstance(n, ast.AnnAssign) else n.targets) if isinstance(t, ast.Name)}
    assert set(ml_dash.__all__) <= names, set(ml_dash.__all__) - names
    # ... and every public name of the stub exists at runtime (`from ml_dash import Record`).
    public = {n for n in names if not n.startswith("_")} | {"__version__"}
    assert not [n for n in public if not hasattr(ml_dash, n)]
    assert issubclass(ml_dash.RemoteError, ml_dash.StoreError) and issubclass(ml_dash.StoreError, Exception)
