"""`Experiment(..., remote="http://...")`: the same API against `ml-dash serve`, no local store."""

import hashlib
import json
import os
import re
import subprocess
import time

import pytest

from conftest import cli_binary
from ml_dash import Experiment


@pytest.fixture
def server(tmp_path):
    """A server on a fresh store; yields (url, root, stderr path)."""
    root = tmp_path / "served"
    log = tmp_path / "serve.log"
    with open(log, "wb") as err:
        p = subprocess.Popen(
            [cli_binary(), "--root", str(root), "serve", "--listen", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.time() + 30
        url = None
        while url is None:
            m = re.search(r"listening on (http://\S+)", log.read_text())
            if m:
                url = m.group(1)
            elif p.poll() is not None or time.time() > deadline:
                raise RuntimeError("the server did not start: " + log.read_text())
            else:
                time.sleep(0.05)
        yield url, root, log
    finally:
        p.terminate()
        p.wait(timeout=30)


def test_the_same_api_works_on_a_server(server, tmp_path, cli):
    url, root, _ = server
    src = tmp_path / "model.pth"
    src.write_bytes(os.urandom(3 << 20))
    with Experiment("run-1", "vision", remote=url) as exp:
        rec = exp.file(src, prefix="/models", description="best", tags=["best", "ckpt"], metadata={"epoch": 3})
        assert (rec["filename"], rec["sizeBytes"], rec["version"]) == ("model.pth", 3 << 20, 1)
        assert rec["checksum"] == hashlib.sha256(src.read_bytes()).hexdigest()
        assert exp.file(src, prefix="/models")["version"] == 2
        assert [r["filename"] for r in exp.files()] == ["model.pth"]
        assert len(exp.files(all_versions=True)) == 2
        assert exp.files(tags=["best"]) == []  # the latest version has no tags
        assert exp.get("/models/model.pth", version=1)["tags"] == ["best", "ckpt"]
        assert exp.read_bytes("/models/model.pth") == src.read_bytes()
        exp.download("/models/model.pth", tmp_path / "back.pth", version=1)
        assert (tmp_path / "back.pth").read_bytes() == src.read_bytes()
        with exp.open_file("/models/model.pth") as f:
            f.seek(1 << 20)
            assert f.read(10) == src.read_bytes()[1 << 20 : (1 << 20) + 10]
            f.seek(-5, os.SEEK_END)
            assert f.read() == src.read_bytes()[-5:]
        assert exp.update("/models/model.pth", description="newer")["description"] == "newer"

        assert exp.parameters().set(lr=0.1, model={"layers": 4}) == {"lr": 0.1, "model.layers": 4}
        assert exp.parameters().get()["model.layers"] == 4
        exp.log("started", metadata={"step": 0})
        exp.log("careful", level="warn")
        assert [(l["level"], l["message"]) for l in exp.logs()] == [("info", "started"), ("warn", "careful")]
        for step in range(3):
            exp.metric("loss").append(value=1.0 / (step + 1), step=step)
        pts = exp.metric("loss").points()
        assert [p["data"]["step"] for p in pts] == [0, 1, 2]
        assert [p["index"] for p in pts] == [0, 1, 2]

        deleted = exp.delete("/models/model.pth")
        assert len(deleted) == 2 and all(r["deletedAt"] for r in deleted)
        assert exp.files() == []
        with pytest.raises(FileNotFoundError):
            exp.read_bytes("/models/model.pth")

    # The server's store is the one the CLI reads.
    listed = cli("list", "--all-versions", "--deleted", "--json", root=root)
    assert {r["version"] for r in listed} == {1, 2}
    params = cli("params", "--project", "vision", "--experiment", "run-1", "--json", root=root)
    assert params[0]["data"] == {"lr": 0.1, "model.layers": 4}


def test_status_and_failures_are_recorded(server, tmp_path):
    url, _, _ = server
    import urllib.request

    exp = Experiment("run-2", "vision", remote=url)
    with pytest.raises(RuntimeError):
        with exp:
            raise RuntimeError("training diverged")
    exp_id = exp._id
    with urllib.request.urlopen(f"{url}/api/nodes/{exp_id}") as r:
        assert json.load(r)["status"] == "FAILED"
    with pytest.raises(FileNotFoundError):
        Experiment("run-2", "vision", remote=url).file(tmp_path / "missing.bin")


def test_tokens_are_sent_and_checked(server, tmp_path, monkeypatch):
    url, root, log = server
    out = subprocess.run(
        [cli_binary(), "--root", str(root), "token", "add", "ci", "--namespace", "team", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    secret = json.loads(out.stdout)["token"]
    src = tmp_path / "a.txt"
    src.write_text("hello")
    monkeypatch.delenv("ML_DASH_TOKEN", raising=False)
    monkeypatch.setenv("ML_DASH_CONFIG_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(PermissionError, match="401"):
        Experiment("r", "p", namespace="team", remote=url).file(src)
    # The argument, the environment, then the ml-dash client's tokens.json.
    assert Experiment("r", "p", namespace="team", remote=url, token=secret).file(src)["version"] == 1
    monkeypatch.setenv("ML_DASH_TOKEN", secret)
    assert Experiment("r", "p", namespace="team", remote=url).file(src)["version"] == 2
    monkeypatch.delenv("ML_DASH_TOKEN")
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "tokens.json").write_text(json.dumps({"ml-dash-token": secret}))
    monkeypatch.setenv("ML_DASH_CONFIG_DIR", str(cfg))
    assert Experiment("r", "p", namespace="team", remote=url).file(src)["version"] == 3
    # Another namespace: 403.
    with pytest.raises(PermissionError, match="403"):
        Experiment("r", "p", namespace="other", remote=url).file(src)
    assert secret not in log.read_text()


def test_a_file_changed_while_it_is_sent_is_not_stored(server, tmp_path, monkeypatch):
    """The SHA-256 follows the file, computed as it is sent; a file that grows while it is sent
    cuts the request off (as the local upload refuses a source that changed): nothing stored,
    and the next upload of the path is version 1."""
    import ml_dash._server as srv

    url, root, _ = server
    src = tmp_path / "ckpt.bin"
    src.write_bytes(os.urandom(3 << 20))
    real = hashlib.sha256

    class GrowsTheFile:
        """A SHA-256 that appends to the source as the first piece is hashed."""

        def __init__(self):
            self.h, self.grown = real(), False

        def update(self, b):
            if not self.grown:
                with open(src, "ab") as f:
                    f.write(b"written meanwhile")
                self.grown = True
            self.h.update(b)

        def hexdigest(self):
            return self.h.hexdigest()

    exp = Experiment("run-c", "vision", remote=url)
    monkeypatch.setattr(srv.hashlib, "sha256", GrowsTheFile)
    with pytest.raises(Exception, match="changed while it was sent"):
        exp.file(src, prefix="/ckpt")
    monkeypatch.setattr(srv.hashlib, "sha256", real)
    assert exp.files() == []
    rec = exp.file(src, prefix="/ckpt")
    assert rec["version"] == 1
    assert rec["checksum"] == hashlib.sha256(src.read_bytes()).hexdigest()
