"""Fixtures for the `ml-dash serve` suite (run it with tests/serve/run.sh).

A server is the release binary (`ML_DASH_BIN`) started on a fresh store in a temporary
directory, listening on 127.0.0.1 on a port the kernel picks (parsed from its `listening on`
line), its stderr captured to a file, stopped on teardown. The ml-dash 0.11 client is
configured through the environment before it is imported: no PyPI version check, no keyring,
no managed-experiment broker, and a token in `ML_DASH_CONFIG_DIR/tokens.json`.

The client's buffered uploader deletes uploaded source files that sit under
`tempfile.gettempdir()`, so sources live under target/serve-src, never under TMPDIR (run.sh
points TMPDIR at target/serve-tmp).
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

# The client reads these at import (version check) and at Experiment() (token, broker).
os.environ["ML_DASH_NO_VERSION_CHECK"] = "1"
os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
for _k in ("DREAMLAKE_EXPERIMENT_BROKER", "DREAMLAKE_EXPERIMENT_BROKER_TOKEN", "ML_DASH_ROOT"):
    os.environ.pop(_k, None)

import httpx  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TARGET = REPO / "target"
BIN = os.environ.get("ML_DASH_BIN", str(TARGET / "release" / "ml-dash"))
SMALL = os.environ.get("ML_DASH_SERVE_SMALL") == "1"
KEEP = os.environ.get("ML_DASH_SERVE_KEEP") == "1"
SRC_ROOT = TARGET / "serve-src"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def big(n):
    """A big size of the suite: n, or n/8 with ML_DASH_SERVE_SMALL=1."""
    return n // 8 if SMALL else n


def _under(p, d):
    p, d = os.path.realpath(p), os.path.realpath(d)
    return p == d or p.startswith(d.rstrip("/") + "/")


assert not _under(SRC_ROOT, tempfile.gettempdir()), (
    f"{SRC_ROOT} is under TMPDIR ({tempfile.gettempdir()}): the ml-dash client would delete "
    "the files it uploads from there; run tests/serve/run.sh or set TMPDIR elsewhere"
)


# ------------------------------------------------------------------------------------------
# Deterministic data: the same (seed, size) gives the same bytes every time, so a checksum
# can be computed in one pass and the bytes sent in another without holding them.

try:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    def _keystream(seed):
        key = hashlib.sha256(f"ml-dash-serve/{seed}".encode()).digest()[:16]
        enc = Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()
        zeros = bytes(16 * MiB)

        def next_piece(n):
            out = b""
            while len(out) < n:
                out += enc.update(zeros[: min(n - len(out), len(zeros))])
            return out

        return next_piece

except ImportError:  # pragma: no cover - cryptography comes with ml-dash 0.11
    import random

    def _keystream(seed):
        r = random.Random(f"ml-dash-serve/{seed}")

        def next_piece(n):
            return b"".join(r.randbytes(min(MiB, n - i)) for i in range(0, n, MiB))

        return next_piece


def data_pieces(seed, size, piece=4 * MiB):
    """`size` pseudo-random bytes (AES-CTR keystream of `seed`), in pieces of `piece` bytes."""
    nxt = _keystream(seed)
    left = size
    while left > 0:
        n = min(piece, left)
        yield nxt(n)
        left -= n


def data_sha256(seed, size):
    h = hashlib.sha256()
    for p in data_pieces(seed, size, 16 * MiB):
        h.update(p)
    return h.hexdigest()


def data_bytes(seed, size):
    return b"".join(data_pieces(seed, size))


def write_data(path, seed, size, piece=64 * MiB):
    """Write the data of (seed, size) to `path` in pieces; return its SHA-256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for p in data_pieces(seed, size, piece):
            h.update(p)
            f.write(p)
    return h.hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 * MiB), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(b):
    return hashlib.sha256(b).hexdigest()


# ------------------------------------------------------------------------------------------
# The CLI.


def cli(root, *args, check=True, timeout=600, env=None):
    """Run `ml-dash --root ROOT ARGS...`; returns the CompletedProcess (text)."""
    p = subprocess.run(
        [BIN, "--root", str(root), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check and p.returncode != 0:
        raise AssertionError(
            f"ml-dash {' '.join(map(str, args))} exited {p.returncode}\n"
            f"stdout: {p.stdout[-4000:]}\nstderr: {p.stderr[-4000:]}"
        )
    return p


def cli_json(root, *args, **kw):
    """Run a `--json` command and parse its one JSON object per line."""
    p = cli(root, *args, "--json", **kw)
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def listing(root, *args):
    """Every version the store holds, deleted ones too, sorted (`ml-dash list`)."""
    recs = cli_json(root, "list", "--all-versions", "--deleted", *args)
    return sorted(recs, key=lambda r: (r["namespace"], r["project"], r["experiment"], r["path"],
                                       r["filename"], r["version"]))


def make_token(root, name, namespaces=()):
    """`ml-dash token add`: returns the secret."""
    args = ["token", "add", name]
    for ns in namespaces:
        args += ["--namespace", ns]
    (out,) = cli_json(root, *args)
    assert out["name"] == name and out["token"], out
    return out["token"]


# ------------------------------------------------------------------------------------------
# Servers.

LISTENING = re.compile(r"ml-dash serve: listening on http://(127\.0\.0\.1:\d+)")


class Server:
    """One `ml-dash serve` process on `root`."""

    def __init__(self, root, log_path, args=(), env=None, token=None):
        self.root = Path(root)
        self.log_path = Path(log_path)
        self.args = list(args)
        self.env = env
        self.token = token
        self.proc = None
        self.addr = None
        self._log = None

    @property
    def url(self):
        return f"http://{self.addr}"

    @property
    def pid(self):
        return self.proc.pid

    def start(self, timeout=60):
        assert self.proc is None or self.proc.poll() is not None
        self._log = open(self.log_path, "ab")
        start_at = self._log.tell()
        self.proc = subprocess.Popen(
            [BIN, "--root", str(self.root), "serve", "--listen", "127.0.0.1:0", *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=self.env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(start_at)
                m = LISTENING.search(f.read().decode("utf-8", "replace"))
            if m:
                self.addr = m.group(1)
                return self
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"ml-dash serve exited {self.proc.returncode} before listening:\n"
                    + self.log_text()[-4000:]
                )
            time.sleep(0.02)
        self.kill()
        raise AssertionError("ml-dash serve did not print its listening line in time:\n"
                             + self.log_text()[-4000:])

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Signal the server and wait for it to exit; returns its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"ml-dash serve did not exit within {timeout} s of {sig!r}")
        if self._log:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._log:
            self._log.close()
            self._log = None

    def log_text(self):
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def proc_status(self, key):
        """A field of /proc/PID/status in bytes (VmHWM, VmRSS)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    def headers(self, token=None):
        token = self.token if token is None else token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def http(self, token=None, timeout=120.0):
        """An httpx client for this server (with the token unless one is given)."""
        return httpx.Client(base_url=self.url, headers=self.headers(token), timeout=timeout)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _passed(request):
    """The test passed (or failed as an expected xfail)."""
    rep = getattr(request.node, "rep_call", None)
    return rep is not None and (rep.passed or hasattr(rep, "wasxfail"))


@pytest.fixture
def workdir(request):
    """A directory for this test's stores, logs and client sources, outside TMPDIR (the client
    deletes uploaded sources under TMPDIR). Removed after a passing test (ML_DASH_SERVE_KEEP=1
    keeps it)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:80]
    d = SRC_ROOT / f"{name}-{uuid.uuid4().hex[:8]}"
    d.mkdir(parents=True)
    yield d
    if KEEP:
        return
    if not _passed(request):
        # A failed test keeps its logs (its stores can be GiBs).
        keep = TARGET / "serve-failed" / d.name
        keep.mkdir(parents=True, exist_ok=True)
        for lg in d.rglob("*.log"):
            shutil.copy(lg, keep / lg.name)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_server(workdir):
    """make_server(root=None, args=(), token=..., env=None, start=True) -> Server. Every server
    is killed on teardown."""
    made = []

    def make(root=None, args=(), token=None, env=None, start=True, log_name=None):
        root = Path(root) if root else workdir / f"store{len(made)}"
        log = workdir / (log_name or f"serve{len(made)}.log")
        s = Server(root, log, args=args, env=env, token=token)
        made.append(s)
        if start:
            s.start()
        return s

    yield make
    for s in made:
        s.kill()


@pytest.fixture
def server(make_server, workdir, monkeypatch):
    """A server on a fresh store with one token for every namespace (`server.token`), and the
    ml-dash client configured to send it (ML_DASH_CONFIG_DIR/tokens.json)."""
    root = workdir / "store"
    token = make_token(root, "tester")
    s = make_server(root=root, token=token, log_name="serve.log")
    client_config(workdir / "client-config", token, monkeypatch)
    return s


def client_config(d, token, monkeypatch):
    """An ML_DASH_CONFIG_DIR holding `token` for the ml-dash client (no encrypted store)."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    (d / "tokens.json").write_text(json.dumps({"ml-dash-token": token}))
    monkeypatch.setenv("ML_DASH_CONFIG_DIR", str(d))
    return d


# ------------------------------------------------------------------------------------------
# Measured numbers, printed at the end of the run and written to target/serve-results.json.

_RESULTS = {}


@pytest.fixture
def record():
    def rec(name, value):
        _RESULTS[name] = value

    return rec


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    terminalreporter.section("ml-dash serve: measurements")
    for k, v in _RESULTS.items():
        terminalreporter.write_line(f"{k}: {v}")
    try:
        (TARGET / "serve-results.json").write_text(
            json.dumps({"small": SMALL, **_RESULTS}, indent=2) + "\n")
    except OSError:
        pass


# ------------------------------------------------------------------------------------------
# Raw HTTP helpers (the requests the ml-dash client sends, built by hand).

LIST_FILES = """
query ListExperimentFilesPaginated($experimentId: ID!, $limit: Int!, $offset: Int!) {
  experimentById(id: $experimentId) {
    filesPaginated(limit: $limit, offset: $offset) {
      files {
        id
        name
        description
        tags
        metadata
        createdAt
        pPath
        physicalFile { id filename contentType sizeBytes checksum s3Url }
      }
      totalCount
      hasMore
    }
  }
}
"""


def gql(http, query, variables=None):
    return http.post("/graphql", json={"query": query, "variables": variables or {}})


def list_files_gql(http, exp_id):
    r = gql(http, LIST_FILES, {"experimentId": exp_id, "limit": 500, "offset": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "errors" not in body, body
    return body["data"]["experimentById"]["filesPaginated"]["files"]


def open_experiment(http, ns, project, name, folders=()):
    """Create (upsert) an experiment as the client's open does; returns its ids."""
    r = http.post(f"/api/namespaces/{ns}/nodes",
                  json={"type": "PROJECT", "name": project, "slug": project})
    assert r.status_code in (200, 201), r.text
    pid = r.json()["project"]["id"]
    parent = "ROOT"
    for f in folders:
        r = http.post(f"/api/namespaces/{ns}/nodes",
                      json={"type": "FOLDER", "projectId": pid, "parentId": parent, "name": f})
        assert r.status_code in (200, 201), r.text
        parent = r.json()["node"]["id"]
    r = http.post(f"/api/namespaces/{ns}/nodes",
                  json={"type": "EXPERIMENT", "name": name, "parentId": parent, "projectId": pid})
    assert r.status_code in (200, 201), r.text
    b = r.json()
    return {"ns": ns, "project": project, "project_id": pid, "id": b["experiment"]["id"],
            "node_id": b["node"]["id"]}


def multipart(fields, filename, content, size=None, boundary=None,
              content_type="application/octet-stream", trailer=True, after=()):
    """A multipart/form-data body like the client's: text `fields` (name, value) in order, then
    the `file` part, then the text parts `after` it (checks computed while sending). `content`
    is bytes or an iterable of bytes (then `size` is its length). Returns (headers, body) where
    body is bytes or a generator; Content-Length is set."""
    boundary = boundary or uuid.uuid4().hex
    head = b""
    for name, value in fields:
        v = value if isinstance(value, bytes) else str(value).encode()
        head += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                 .encode() + v + b"\r\n")
    head += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
             f"filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n").encode()
    tail = b"".join(f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"{n}\"\r\n\r\n{v}"
                    .encode() for n, v in after)
    tail += f"\r\n--{boundary}--\r\n".encode() if trailer else b""
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if isinstance(content, (bytes, bytearray)):
        body = head + bytes(content) + tail
        headers["Content-Length"] = str(len(body))
        return headers, body
    assert size is not None

    def gen():
        yield head
        yield from content
        yield tail

    headers["Content-Length"] = str(len(head) + size + len(tail))
    return headers, gen()


def file_fields(exp, name, checksum, parent=None, description=None, tags=None, metadata=None):
    """The text parts the client sends before the file, in its order."""
    f = [("type", "FILE"), ("projectId", exp["project_id"]), ("experimentId", exp["id"]),
         ("parentId", parent or exp["node_id"]), ("name", name)]
    if checksum is not None:
        f.append(("checksum", checksum))
    if description:
        f.append(("description", description))
    if tags:
        f.append(("tags", ",".join(tags)))
    if metadata is not None:
        f.append(("metadata", metadata if isinstance(metadata, str) else json.dumps(metadata)))
    return f


def upload(http, exp, name, content, checksum="auto", size=None, parent=None, after=(),
           before=(), **kw):
    """POST one file (bytes, or an iterable of bytes of `size`) as the client does; `before`
    and `after`: more text parts before and after the file."""
    if checksum == "auto":
        assert isinstance(content, (bytes, bytearray))
        checksum = sha256_bytes(content)
    fields = file_fields(exp, name, checksum, parent=parent, **kw) + list(before)
    headers, body = multipart(fields, name, content, size=size, after=after)
    return http.post(f"/api/namespaces/{exp['ns']}/nodes", content=body, headers=headers)


def crc32c(data, crc=0):
    """CRC-32C (Castagnoli), bit by bit per byte from a table: for small test bodies."""
    table = _CRC32C_TABLE
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF


def _crc32c_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_CRC32C_TABLE = _crc32c_table()


def exp_folder(http, exp, name, parent=None):
    """An experiment-level folder (a prefix of its files); returns its node id."""
    r = http.post(f"/api/namespaces/{exp['ns']}/nodes",
                  json={"type": "FOLDER", "projectId": exp["project_id"],
                        "experimentId": exp["id"], "parentId": parent or exp["node_id"],
                        "name": name})
    assert r.status_code in (200, 201), r.text
    return r.json()["node"]["id"]


def assert_api_error(r, status=None):
    """A 4xx answered as JSON {"error": str, "code": str}."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    if status is not None:
        assert r.status_code == status, (r.status_code, r.text[:500])
    body = r.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("code"), str) and body["code"], body
    return body


class Background(threading.Thread):
    """Run fn(*args) in a thread; .result / .error once joined."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args = fn, args
        self.result = self.error = None
        self.finished_at = None

    def run(self):
        try:
            self.result = self.fn(*self.args)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            self.finished_at = time.monotonic()

    def outcome(self, timeout=None):
        self.join(timeout)
        assert not self.is_alive(), "background call did not finish"
        if self.error is not None:
            raise self.error
        return self.result
