import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TUTORIAL = Path(__file__).resolve().parent / "tutorial"


def cli_binary():
    for p in [os.environ.get("ML_DASH_BIN"), REPO / "target/release/ml-dash", REPO / "target/debug/ml-dash"]:
        if p and Path(p).is_file():
            return str(p)
    b = shutil.which("ml-dash")
    if b:
        return b
    raise RuntimeError("no ml-dash binary: run `cargo build --release` first (or set ML_DASH_BIN)")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in a fresh directory, as a user would (the ml-dash Files tutorial uses relative paths)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def cli():
    """Run the ml-dash CLI; returns parsed JSON lines for --json commands."""
    binary = cli_binary()

    def run(*args, root=".ml-dash"):
        out = subprocess.run([binary, "--root", str(root), *args], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        if "--json" in args:
            return [json.loads(l) for l in out.stdout.splitlines() if l.strip()]
        return out.stdout

    return run


def tutorial_block(name):
    return (TUTORIAL / f"{name}.py").read_text()
