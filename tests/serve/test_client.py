"""The real ml-dash 0.11.0 client (from PyPI) against `ml-dash serve`: remote mode
(`dash_root=None`) and hybrid mode (`dash_root=DIR`), read back through the client, raw HTTP
and our CLI on the same store while the server runs."""

import json
import time

import pytest
from conftest import (GiB, MiB, big, cli, cli_json, listing, sha256_file, write_data)

from ml_dash import Experiment

PREFIX = "ns/proj/f1/f2/name"
# Folders are joined with "." in the stored experiment name.
STORED = "f1.f2.name"


def node(server, node_id):
    with server.http() as h:
        r = h.get(f"/api/nodes/{node_id}")
    assert r.status_code == 200, r.text
    return r.json()


def by_name(files):
    out = {}
    for f in files:
        assert f["name"] not in out, f"two live files named {f['name']}: {files}"
        out[f["name"]] = f
    return out


def rows_of(metric, limit):
    rows = []
    for block in metric.iter_row_blocks(limit=limit):
        names = [c.name for c in block.columns]
        rows += [dict(zip(names, r)) for r in block.rows]
    return rows


def sources(workdir, ckpt_size):
    src = workdir / "src"
    src.mkdir()
    notes = src / "notes.txt"
    notes.write_text("hello world\n" * 100)
    config = src / "config.json"
    config.write_text(json.dumps({"model": "resnet50", "layers": [3, 4, 6, 3]}, indent=2))
    ckpt = src / "step_1000.pt"
    t = time.monotonic()
    ckpt_sha = write_data(ckpt, "checkpoint", ckpt_size)
    return src, notes, config, ckpt, ckpt_sha, time.monotonic() - t


@pytest.mark.big
def test_remote_mode_round_trip(server, workdir, record):
    ckpt_size = big(GiB)
    src, notes, config, ckpt, ckpt_sha, _ = sources(workdir, ckpt_size)
    sums = {"notes.txt": sha256_file(notes), "config.json": sha256_file(config),
            "step_1000.pt": ckpt_sha}

    exp = Experiment(prefix=PREFIX, dash_url=server.url, dash_root=None, readme="demo run",
                     tags=["demo", "serve"], metadata={"seed": 1})
    with exp.run as e:
        exp_id = e.id
        assert isinstance(exp_id, str) and exp_id.isdigit()
        assert node(server, exp_id)["status"] == "RUNNING"

        e.params.set(lr=0.001, model={"layers": 4, "arch": "resnet"}, epochs=3)
        e.params.set(epochs=5)  # merged into the stored parameters
        e.logs.info("training started", epoch=0)
        e.log("plain message", level="warn")
        for step in range(5):
            e.metrics("train").log(loss=1.0 / (step + 1), step=step)
        for step in range(3):
            e.metrics("eval").log(accuracy=0.5 + 0.1 * step, step=step, best=step == 2)
        e.logs.error("something failed", code=7)

        e.files("configs").upload(str(notes), to="notes.txt", description="a note",
                                  tags=["t1", "t2"], metadata={"k": [1, 2], "n": {"x": 1}})
        e.files().upload(str(config))
        t = time.monotonic()
        e.files("ckpt/best").upload(str(ckpt), description="checkpoint at step 1000",
                                    tags=["checkpoint", "best"],
                                    metadata={"epoch": 5, "val_accuracy": 0.95})
        e.flush()
        record(f"client upload+flush of a {ckpt_size // MiB} MiB checkpoint (s)",
               round(time.monotonic() - t, 2))

        # Files: the client's list (GraphQL), download (it checks the SHA-256 itself), delete.
        files = by_name(e.files().list())
        assert set(files) == set(sums)
        f = files["step_1000.pt"]
        assert f["physicalFile"]["checksum"] == ckpt_sha
        assert int(f["physicalFile"]["sizeBytes"]) == ckpt_size
        assert f["description"] == "checkpoint at step 1000"
        assert f["tags"] == ["checkpoint", "best"]
        assert f["metadata"] == {"epoch": 5, "val_accuracy": 0.95}
        n = files["notes.txt"]
        assert (n["description"], n["tags"]) == ("a note", ["t1", "t2"])
        assert n["metadata"] == {"k": [1, 2], "n": {"x": 1}}
        assert n["physicalFile"]["checksum"] == sums["notes.txt"]
        assert files["config.json"]["physicalFile"]["checksum"] == sums["config.json"]
        assert files["config.json"]["tags"] == []

        dl = workdir / "dl"
        dl.mkdir()
        t = time.monotonic()
        got = e.files("ckpt/best/step_1000.pt").download(to=str(dl / "ckpt.pt"))
        record(f"client download of a {ckpt_size // MiB} MiB checkpoint (s)",
               round(time.monotonic() - t, 2))
        assert sha256_file(got) == ckpt_sha
        (dl / "ckpt.pt").unlink()
        got = e.files("configs/notes.txt").download(to=str(dl / "notes.txt"))
        assert open(got).read() == notes.read_text()
        got = e.files("config.json").download(to=str(dl / "config.json"))
        assert sha256_file(got) == sums["config.json"]

        assert e.files("configs/notes.txt").exists()
        e.files("configs/notes.txt").delete()
        assert not e.files("configs/notes.txt").exists()
        assert set(by_name(e.files().list())) == {"config.json", "step_1000.pt"}
        with pytest.raises(ValueError):
            e.files("configs/notes.txt").download(to=str(dl / "gone.txt"))

        # Parameters, metrics, logs.
        assert e.params.get() == {"lr": 0.001, "model.layers": 4, "model.arch": "resnet",
                                  "epochs": 5}
        assert e.params.get(flatten=False) == {"lr": 0.001, "epochs": 5,
                                               "model": {"layers": 4, "arch": "resnet"}}

        rows = rows_of(e.metrics("train"), limit=2)  # three pages
        assert [(r["step"], r["loss"]) for r in rows] == [(s, 1.0 / (s + 1)) for s in range(5)]
        assert all(isinstance(r["_ts"], float) for r in rows)
        page = e.metrics("train").read_rows(limit=3)
        assert (page.returned, page.has_more) == (3, True) and page.next_cursor
        page2 = e.metrics("train").read_rows(limit=3, cursor=page.next_cursor)
        assert (page2.returned, page2.has_more, page2.next_cursor) == (2, False, None)
        ev = rows_of(e.metrics("eval"), limit=1000)
        assert [(r["step"], r["best"]) for r in ev] == [(0, False), (1, False), (2, True)]
        assert [r["accuracy"] for r in ev] == pytest.approx([0.5, 0.6, 0.7])

        stats = e.metrics("train").stats()
        assert stats["name"] == "train" and stats["totalDataPoints"] == 5
        assert sorted(m["name"] for m in e.metrics("train").list_all()) == ["eval", "train"]

        logs = e._client.query_logs(e.id, limit=100, order="asc")["logs"]
        assert [(lg["level"], lg["message"]) for lg in logs] == [
            ("info", "training started"), ("warn", "plain message"),
            ("error", "something failed")]
        assert logs[0]["metadata"] == {"epoch": 0} and logs[2]["metadata"] == {"code": 7}
        errs = e._client.query_logs(e.id, level=["error"])["logs"]
        assert [lg["message"] for lg in errs] == ["something failed"]
        desc = e._client.query_logs(e.id, order="desc", limit=1)["logs"]
        assert [lg["message"] for lg in desc] == ["something failed"]

    assert node(server, exp_id)["status"] == "COMPLETED"

    # Our CLI on the same store while the server runs.
    live = cli_json(server.root, "list")
    assert {(r["path"], r["filename"]): r["checksum"] for r in live} == {
        ("/", "config.json"): sums["config.json"],
        ("/ckpt/best", "step_1000.pt"): ckpt_sha,
    }
    for r in live:
        assert (r["namespace"], r["project"], r["experiment"]) == ("ns", "proj", STORED)
    (ck,) = [r for r in live if r["filename"] == "step_1000.pt"]
    assert ck["sizeBytes"] == ckpt_size
    assert ck["metadata"] == {"epoch": 5, "val_accuracy": 0.95}
    assert ck["tags"] == ["checkpoint", "best"]
    (gone,) = [r for r in listing(server.root) if r["filename"] == "notes.txt"]
    assert gone["deletedAt"] and gone["checksum"] == sums["notes.txt"]
    assert gone["path"] == "/configs" and gone["description"] == "a note"

    p = cli(server.root, "params", "--namespace", "ns", "--project", "proj",
            "--experiment", STORED)
    assert "lr = 0.001" in p.stdout and "model.layers = 4" in p.stdout, p.stdout
    assert "epochs = 5" in p.stdout and "model.arch = \"resnet\"" in p.stdout, p.stdout
    (pj,) = cli_json(server.root, "params", "--namespace", "ns", "--project", "proj",
                     "--experiment", STORED)
    assert pj["data"] == {"lr": 0.001, "model.layers": 4, "model.arch": "resnet", "epochs": 5}
    lg = cli_json(server.root, "logs", "--namespace", "ns", "--project", "proj",
                  "--experiment", STORED)
    assert [x["message"] for x in lg] == ["training started", "plain message", "something failed"]
    pts = cli_json(server.root, "metrics", "--namespace", "ns", "--project", "proj",
                   "--experiment", STORED, "--name", "train")
    assert [x["data"]["step"] for x in pts] == [0, 1, 2, 3, 4]
    v = cli(server.root, "verify")
    assert v.returncode == 0


def test_reopen_is_the_same_experiment_and_failure_marks_failed(server, workdir):
    exp = Experiment(prefix=PREFIX, dash_url=server.url, dash_root=None)
    with exp.run as e:
        first = e.id
        e.params.set(a=1)
    assert node(server, first)["status"] == "COMPLETED"

    # Re-opening the same prefix finds the same experiment, RUNNING again, params kept.
    exp = Experiment(prefix=PREFIX, dash_url=server.url, dash_root=None)
    with pytest.raises(RuntimeError, match="boom"):
        with exp.run as e:
            assert e.id == first
            assert node(server, first)["status"] == "RUNNING"
            e.params.set(b=2)
            assert e.params.get() == {"a": 1, "b": 2}
            raise RuntimeError("boom")
    assert node(server, first)["status"] == "FAILED"

    # An experiment without folders, in the same project: stored under its own name.
    exp = Experiment(prefix="ns/proj/plain", dash_url=server.url, dash_root=None)
    with exp.run as e:
        other = e.id
        e.metrics("m").log(v=1)
    assert other != first
    assert node(server, other)["status"] == "COMPLETED"
    assert node(server, other)["name"] == "plain"
    (pj,) = cli_json(server.root, "params", "--namespace", "ns", "--project", "proj",
                     "--experiment", STORED)
    assert pj["data"] == {"a": 1, "b": 2}
    pts = cli_json(server.root, "metrics", "--namespace", "ns", "--project", "proj",
                   "--experiment", "plain")
    assert [x["data"]["v"] for x in pts] == [1]


def test_hybrid_mode(server, workdir):
    """dash_url and dash_root: every write goes to the server and to local storage; lists,
    downloads and metric rows come from the server; params, metric stats and metric lists
    come back from local storage (the client overwrites the server's answer)."""
    src = workdir / "src"
    src.mkdir()
    a = src / "a.txt"
    a.write_text("alpha\n" * 1000)
    b = src / "weights.bin"
    b_sha = write_data(b, "hybrid", 3 * MiB + 17)
    dash_root = workdir / "dash"

    exp = Experiment(prefix=PREFIX, dash_url=server.url, dash_root=str(dash_root),
                     readme="hybrid run")
    with exp.run as e:
        exp_id = e.id
        e.params.set(lr=0.1, opt={"name": "adam"})
        e.logs.info("hello", step=1)
        for i in range(4):
            e.metrics("loss").log(value=1.0 / (i + 1), step=i)
        e.files("texts").upload(str(a), description="alpha", tags=["x"], metadata={"n": 1})
        e.files("models").upload(str(b), to="w.bin")
        # Four at once into one new folder (the client uploads up to 4 in parallel, each
        # upserting the folder).
        for i in range(4):
            (src / f"part{i}.txt").write_text(f"part {i}\n")
            e.files("parts/new").upload(str(src / f"part{i}.txt"))
        e.flush()

        files = by_name(e.files().list())  # from the server
        assert set(files) == {"a.txt", "w.bin"} | {f"part{i}.txt" for i in range(4)}
        for i in range(4):
            got = e.files(f"parts/new/part{i}.txt").download(to=str(workdir / f"p{i}"))
            assert open(got).read() == f"part {i}\n"
        assert files["w.bin"]["physicalFile"]["checksum"] == b_sha
        assert files["a.txt"]["physicalFile"]["checksum"] == sha256_file(a)
        assert files["a.txt"]["metadata"] == {"n": 1} and files["a.txt"]["tags"] == ["x"]
        got = e.files("models/w.bin").download(to=str(workdir / "w.bin"))
        assert sha256_file(got) == b_sha

        assert e.params.get() == {"lr": 0.1, "opt.name": "adam"}
        rows = rows_of(e.metrics("loss"), limit=3)  # from the server
        assert [r["step"] for r in rows] == [0, 1, 2, 3]
        # Answered from local storage (after the server answered): only that they work.
        assert isinstance(e.metrics("loss").stats(), dict)
        assert isinstance(e.metrics("loss").list_all(), list)

        # Delete: the server deletes, then the client's local delete (with the server's id)
        # may fail in 0.11; what must hold is that the server no longer lists the file.
        try:
            e.files("texts/a.txt").delete()
        except FileNotFoundError:
            pass
        assert "a.txt" not in by_name(e.files().list())

    assert node(server, exp_id)["status"] == "COMPLETED"

    # The server has everything the client sent.
    with server.http() as h:
        r = h.get(f"/api/experiments/{exp_id}/parameters")
        assert r.json()["data"] == {"lr": 0.1, "opt.name": "adam"}
        r = h.get(f"/api/experiments/{exp_id}/logs")
        assert [lg["message"] for lg in r.json()["logs"]] == ["hello"]
    live = cli_json(server.root, "list")
    assert {(r["experiment"], r["path"], r["filename"], r["checksum"]) for r in live} == {
        (STORED, "/models", "w.bin", b_sha)} | {
        (STORED, "/parts/new", f"part{i}.txt", sha256_file(src / f"part{i}.txt"))
        for i in range(4)}
    (pj,) = cli_json(server.root, "params", "--namespace", "ns", "--project", "proj",
                     "--experiment", STORED)
    assert pj["data"] == {"lr": 0.1, "opt.name": "adam"}

    # And local storage has its own copy of what was uploaded.
    local = {sha256_file(p) for p in dash_root.rglob("*") if p.is_file()}
    assert b_sha in local
    assert any(p.name == "parameters.json" for p in dash_root.rglob("*"))


def test_versions_update_and_cli_interop(server, workdir):
    """Uploading a path twice makes two versions (the client lists the newest); update()
    changes a file's record; the CLI writing to the same store while the server runs is seen
    by the client, and the other way round."""
    src = workdir / "src"
    src.mkdir()
    f = src / "metrics.csv"
    f.write_text("step,loss\n0,1.0\n")
    v1 = sha256_file(f)
    exp = Experiment(prefix="ns/proj/run", dash_url=server.url, dash_root=None)
    with exp.run as e:
        e.files("results").upload(str(f))
        e.flush()
        f.write_text("step,loss\n0,1.0\n1,0.5\n")
        v2 = sha256_file(f)
        e.files("results").upload(str(f), description="second")
        e.flush()
        (cur,) = e.files().list()
        assert (cur["name"], cur["physicalFile"]["checksum"]) == ("metrics.csv", v2)
        got = e.files("results/metrics.csv").download(to=str(workdir / "dl.csv"))
        assert sha256_file(got) == v2
        e.files(file_id=cur["id"], description="updated", tags=["final"],
                metadata={"rows": 2}).update()
        (cur,) = e.files().list()
        assert (cur["description"], cur["tags"], cur["metadata"]) == ("updated", ["final"],
                                                                      {"rows": 2})

        # The CLI uploads into the same experiment while the server runs...
        other = src / "from-cli.txt"
        other.write_text("written by the CLI\n")
        cli(server.root, "upload", other, "--namespace", "ns", "--project", "proj",
            "--experiment", "run", "--prefix", "/cli", "--tag", "cli")
        assert sorted(x["name"] for x in e.files().list()) == ["from-cli.txt", "metrics.csv"]
        got = e.files("cli/from-cli.txt").download(to=str(workdir / "cli.txt"))
        assert open(got).read() == "written by the CLI\n"

    recs = [(r["path"], r["filename"], r["version"], r["checksum"], r["description"])
            for r in listing(server.root)]
    assert recs == [("/cli", "from-cli.txt", 1, sha256_file(other), None),
                    ("/results", "metrics.csv", 1, v1, None),
                    ("/results", "metrics.csv", 2, v2, "updated")]
    # ...and downloads what the client uploaded.
    out = workdir / "v1.csv"
    cli(server.root, "download", "--namespace", "ns", "--project", "proj", "--experiment",
        "run", "/results/metrics.csv", "--version", "1", "-o", out)
    assert sha256_file(out) == v1


def test_restart_keeps_ids_and_data(server, workdir, make_server):
    """Node ids are derived from names: after a restart the client finds the same
    experiment, its folders and files."""
    src = workdir / "src"
    src.mkdir()
    (src / "w.bin").write_bytes(b"\x00\x01" * 5000)
    exp = Experiment(prefix="ns/proj/a/b/run", dash_url=server.url, dash_root=None)
    with exp.run as e:
        first = e.id
        e.files("deep/er").upload(str(src / "w.bin"))
        e.params.set(k="v")
        e.metrics("loss").log(v=0.5)
        e.flush()
        before = e.files().list()
    assert server.stop() == 0
    s2 = make_server(root=server.root, token=server.token)
    exp = Experiment(prefix="ns/proj/a/b/run", dash_url=s2.url, dash_root=None)
    with exp.run as e:
        assert e.id == first
        assert e.files().list() == before
        got = e.files("deep/er/w.bin").download(to=str(workdir / "w.bin"))
        assert sha256_file(got) == sha256_file(src / "w.bin")
        assert e.params.get() == {"k": "v"}
        assert [r["v"] for r in rows_of(e.metrics("loss"), 10)] == [0.5]
    assert node(s2, first)["status"] == "COMPLETED"


def test_metric_names(server):
    """Names the client sends as they are (`m a`, `é`) and the unnamed metric (`None`)."""
    exp = Experiment(prefix="ns/proj/names", dash_url=server.url, dash_root=None)
    with exp.run as e:
        e.metrics("m a").log(v=1)
        e.metrics("é").log(v=2)
        e.metrics.log(epoch=3)
        e.flush()
        assert [r["v"] for r in rows_of(e.metrics("m a"), 10)] == [1]
        assert [r["v"] for r in rows_of(e.metrics("é"), 10)] == [2]
        assert e.metrics("é").stats()["totalDataPoints"] == 1
        names = sorted(m["name"] for m in e.metrics("x").list_all())
        assert names == ["None", "m a", "é"]


def test_metric_name_with_slash(server):
    exp = Experiment(prefix="ns/proj/slash", dash_url=server.url, dash_root=None)
    with exp.run as e:
        e.metrics("train/loss").log(v=1.0, step=0)
        e.metrics("train/loss").log(v=0.5, step=1)
        e.flush()
        assert [r["v"] for r in rows_of(e.metrics("train/loss"), 10)] == [1.0, 0.5]
        assert e.metrics("train/loss").stats()["totalDataPoints"] == 2
        eid = e.id
    assert node(server, eid)["status"] == "COMPLETED"


def test_prefixes_that_would_share_a_stored_name_are_refused(server):
    # Folders are joined with `.` in the stored experiment name: a prefix that would land on an
    # experiment opened with other folders is refused (409), never merged into it.
    with Experiment(prefix=PREFIX, dash_url=server.url, dash_root=None).run as e:
        first = e.id
        e.params.set(which=0)
    for prefix in ["ns/proj/f1.f2/name", "ns/proj/f1/f2.name", "ns/proj/f1.f2.name"]:
        exp = Experiment(prefix=prefix, dash_url=server.url, dash_root=None)
        with pytest.raises(Exception, match="409"):
            with exp.run:
                pass
    with Experiment(prefix=PREFIX, dash_url=server.url, dash_root=None).run as e:
        assert e.id == first
        assert e.params.get() == {"which": 0}


def test_unicode_names_and_many_lines(server, workdir):
    """Names with spaces and non-ASCII characters (the client percent-encodes them in URLs),
    and more log lines and metric points than one client batch (100 and 1000)."""
    src = workdir / "src"
    src.mkdir()
    f = src / "模型 v1.bin"
    f.write_bytes(b"\xff" * 4096)
    exp = Experiment(prefix="ns/项目 α/dossier é/run ü", dash_url=server.url, dash_root=None)
    with exp.run as e:
        eid = e.id
        e.files("sous dossier/ç").upload(str(f), tags=["étiquette"])
        for i in range(250):
            e.logs.info(f"ligne {i}", i=i)
        for i in range(2500):
            e.metrics("perte").log(v=i * 0.5, step=i)
        e.flush()
        (x,) = e.files().list()
        assert x["name"] == "模型 v1.bin" and x["tags"] == ["étiquette"]
        got = e.files("sous dossier/ç/模型 v1.bin").download(to=str(workdir / "dl.bin"))
        assert sha256_file(got) == sha256_file(f)
        logs = e._client.query_logs(eid, limit=1000, order="asc")["logs"]
        assert [lg["message"] for lg in logs] == [f"ligne {i}" for i in range(250)]
        seq = [lg["sequenceNumber"] for lg in logs]
        assert seq == sorted(seq) and len(set(seq)) == 250
        rows = rows_of(e.metrics("perte"), limit=1000)
        assert [r["step"] for r in rows] == list(range(2500))
        assert e.metrics("perte").stats()["totalDataPoints"] == 2500
    assert node(server, eid)["status"] == "COMPLETED"
    (r,) = cli_json(server.root, "list")
    assert (r["namespace"], r["project"], r["experiment"], r["path"], r["filename"]) == (
        "ns", "项目 α", "dossier é.run ü", "/sous dossier/ç", "模型 v1.bin")
