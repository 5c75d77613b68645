"""An experiment on ``ml-dash serve`` (``Experiment(..., remote="http://host:port")``).

The same methods as a local experiment, over HTTP (the standard library's ``urllib``; no local
store). Uploads stream the file and its SHA-256, computed as it is sent, in a part after it:
the server stores the bytes only if what it received matches (a file that changes while it is
sent is not stored). Downloads and reads are checked against the record's
SHA-256. Opening marks the experiment ``RUNNING`` on the server, closing ``COMPLETED`` (or
``FAILED`` when the ``with`` block raised).

The token comes from the ``token`` argument, else ``ML_DASH_TOKEN``, else the ml-dash client's
own file (``$ML_DASH_CONFIG_DIR/tokens.json``, default ``~/.dash/tokens.json``, key
``ml-dash-token``).
"""

import hashlib
import io
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid

from ._core import StoreError

_PIECE = 1 << 20


def _token(token):
    if token:
        return token
    env = os.environ.get("ML_DASH_TOKEN")
    if env:
        return env
    base = os.environ.get("ML_DASH_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".dash")
    try:
        with open(os.path.join(base, "tokens.json"), "rb") as f:
            t = json.load(f).get("ml-dash-token")
        return t if isinstance(t, str) and t else None
    except (OSError, ValueError, AttributeError):
        return None


def _error(e):
    """The server's JSON error as the matching Python exception."""
    try:
        body = json.loads(e.read() or b"{}")
        msg = body.get("error") or str(e)
    except ValueError:
        msg = str(e)
    msg = f"{msg} (HTTP {e.code})"
    if e.code == 404:
        return FileNotFoundError(msg)
    if e.code in (401, 403):
        return PermissionError(msg)
    if 400 <= e.code < 500:
        return ValueError(msg)
    return StoreError(msg)


def _check_name(what, s):
    """The store's rule for one name (the server checks again)."""
    if (
        not isinstance(s, str)
        or s in ("", ".", "..")
        or len(s.encode()) > 255
        or any(c in "/\\" or ord(c) < 32 or ord(c) == 127 for c in s)
    ):
        raise ValueError(f"invalid {what} {s!r}: one non-empty name without '/', '\\', '..' or control characters")
    return s


def _split(path):
    path = "/" + path.lstrip("/")
    d, _, name = path.rpartition("/")
    return (d or "/"), name


class _Conn:
    def __init__(self, url, token):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"remote must be an http:// or https:// URL, not {url!r}")
        self.base = url.rstrip("/")
        self.token = _token(token)

    def request(self, method, path, body=None, headers=None, raw=False):
        h = dict(headers or {})
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        data = body
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=h)
        try:
            resp = urllib.request.urlopen(req, timeout=600)
        except urllib.error.HTTPError as e:
            raise _error(e) from None
        except urllib.error.URLError as e:
            raise ConnectionError(f"cannot reach {self.base}: {e.reason}") from None
        if raw:
            return resp
        with resp:
            return json.loads(resp.read() or b"null")


class _Parameters:
    def __init__(self, exp):
        self._exp = exp

    def set(self, **values):
        """Merge ``values`` (nested dicts become dotted keys); returns all parameters."""
        if not values:
            return self.get()
        return self._exp._conn.request("POST", self._exp._url("parameters"), {"data": values})["data"]

    def get(self):
        """All parameters as a dict of dotted keys (empty when none were set)."""
        return self._exp._conn.request("GET", self._exp._url("parameters"))["data"]


class _Metric:
    def __init__(self, exp, name):
        self._exp = exp
        self.name = name

    def _path(self, what):
        return self._exp._url(f"metrics/{urllib.parse.quote(self.name, safe='')}/{what}")

    def append(self, **fields):
        """Append one point with the given fields; returns it."""
        r = self._exp._conn.request("POST", self._path("append"), {"data": fields})
        return {"index": r["startIndex"], "data": fields}

    def points(self):
        """Every point of the metric."""
        out, cursor = [], None
        while True:
            q = "?limit=10000" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
            try:
                r = self._exp._conn.request("GET", self._path("points") + q)
            except FileNotFoundError:
                return out
            out += r["points"]
            cursor = r.get("nextCursor")
            if not r.get("hasMore") or not cursor:
                return out


class _RangeFile(io.RawIOBase):
    """A stored version read with HTTP range requests: seekable, nothing downloaded ahead."""

    def __init__(self, conn, node_id, record):
        super().__init__()
        self._conn, self._node, self.record = conn, node_id, record
        self._pos, self._len = 0, record["sizeBytes"]

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, b):
        with memoryview(b) as view, view.cast("B") as m:
            n = min(len(m), self._len - self._pos)
            if n <= 0:
                return 0
            end = self._pos + n - 1
            resp = self._conn.request(
                "GET", f"/api/nodes/{self._node}/download", headers={"Range": f"bytes={self._pos}-{end}"}, raw=True
            )
            with resp:
                data = resp.read()
            if len(data) != n:
                raise StoreError(f"the server sent {len(data)} bytes for a range of {n}")
            m[:n] = data
            self._pos += n
            return n

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._len}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self):
        return self._pos


class ServerExperiment:
    """An experiment stored by ``ml-dash serve`` (see the module's docs)."""

    def __init__(self, name, project, namespace="local", remote=None, token=None):
        self._name = _check_name("experiment", name)
        self._project = _check_name("project", project)
        self._namespace = _check_name("namespace", namespace)
        self._conn = _Conn(remote, token)
        self._id = None
        self._closed = False

    name = property(lambda self: self._name)
    project = property(lambda self: self._project)
    namespace = property(lambda self: self._namespace)
    local_path = property(lambda self: None)

    @property
    def remote(self):
        return self._conn.base

    def _url(self, what):
        return f"/api/experiments/{self._open_id()}/{what}"

    def _nodes(self):
        return f"/api/namespaces/{urllib.parse.quote(self._namespace, safe='')}/nodes"

    def _open_id(self):
        if self._closed:
            raise StoreError("the experiment is closed")
        if self._id is None:
            r = self._conn.request(
                "POST",
                self._nodes(),
                {"type": "EXPERIMENT", "name": self._name, "projectSlug": self._project, "parentId": "ROOT"},
            )
            self._id = r["experiment"]["id"]
        return self._id

    def open(self):
        self._open_id()
        return self

    def close(self, status="COMPLETED"):
        if self._closed:
            return None
        if self._id is not None:
            self._conn.request("PATCH", f"/api/nodes/{self._id}", {"status": status})
        self._closed = True
        return None

    def __enter__(self):
        return self.open()

    def __exit__(self, exc_type=None, exc=None, tb=None):
        self.close("FAILED" if exc_type is not None else "COMPLETED")
        return False

    def _folder(self, prefix):
        parent = self._open_id()
        for seg in [s for s in prefix.split("/") if s]:
            r = self._conn.request(
                "POST",
                self._nodes(),
                {"type": "FOLDER", "experimentId": self._id, "parentId": parent, "name": seg},
            )
            parent = r["node"]["id"]
        return parent

    def file(self, path, prefix="/", description=None, tags=None, metadata=None, name=None):
        """Store a file as a new version; returns its record."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"not a regular file: {path}")
        target = name or os.path.basename(path)
        full = prefix.rstrip("/") + "/" + target.lstrip("/")
        folder, filename = _split(full)
        parent = self._folder(folder)
        boundary = "mldash" + uuid.uuid4().hex
        fields = {
            "type": "FILE",
            "experimentId": self._id,
            "parentId": parent,
            "name": filename,
        }
        if description is not None:
            fields["description"] = description
        if tags:
            if any("," in t for t in tags):
                raise ValueError("a tag sent to a server cannot contain ','")
            fields["tags"] = ",".join(tags)
        if metadata is not None:
            fields["metadata"] = json.dumps(metadata, allow_nan=False)
        head = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'.encode() + v.encode() + b"\r\n"
            for k, v in fields.items()
        )
        quoted = filename.replace('"', "_")
        head += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        # The SHA-256 is computed as the file is sent and follows it (one read of the file):
        # the server stores the bytes only if they match it.
        after = f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="checksum"\r\n\r\n'.encode()
        end = f"\r\n--{boundary}--\r\n".encode()
        tail_len = len(after) + 64 + len(end)
        src = open(path, "rb")  # noqa: SIM115 - closed after the request
        st = os.fstat(src.fileno())
        size, was = st.st_size, (st.st_size, st.st_mtime_ns)

        def body():
            h = hashlib.sha256()
            with src as f:
                yield head
                left = size
                while left > 0:
                    chunk = f.read(min(_PIECE, left))
                    if not chunk:
                        break
                    h.update(chunk)
                    left -= len(chunk)
                    yield chunk
                st = os.fstat(f.fileno())
                if left or f.read(1) or (st.st_size, st.st_mtime_ns) != was:
                    # Cut the request off: the server stores nothing.
                    raise OSError(f"{path} changed while it was sent; nothing stored")
            yield after + h.hexdigest().encode() + end

        try:
            r = self._conn.request(
                "POST",
                self._nodes(),
                body(),
                headers={
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                    "Content-Length": str(len(head) + size + tail_len),
                },
            )
        finally:
            src.close()
        return r["node"]["record"]

    def _search(self, **q):
        q = {k: ("true" if v is True else "false" if v is False else v) for k, v in q.items() if v is not None}
        q.update(namespace=self._namespace, project=self._project, experiment=self._name, order="path", limit="10000")
        out, offset = [], 0
        while True:
            q["offset"] = str(offset)
            r = self._conn.request("GET", "/api/search/files?" + urllib.parse.urlencode(q))
            out += r["files"]
            offset += len(r["files"])
            if not r.get("hasMore") or not r["files"]:
                return out

    def _find(self, path, version=None):
        found = self._search(path="/" + path.lstrip("/"), allVersions=version is not None)
        for f in found:
            if version is None or f["version"] == version:
                return f
        v = f" version {version}" if version is not None else ""
        raise FileNotFoundError(f"not found: {self._namespace}/{self._project}/{self._name}/{path.lstrip('/')}{v}")

    def files(self, prefix="/", glob=None, tags=None, all_versions=False, include_deleted=False):
        """Records of the latest live version of each path (or every version)."""
        found = self._search(
            prefix=prefix,
            pattern=glob,
            tags=",".join(tags) if tags else None,
            allVersions=all_versions,
            deleted=include_deleted,
        )
        return [f["record"] for f in found]

    def get(self, path, version=None):
        """The record of a version (the latest live one by default)."""
        return self._find(path, version)["record"]

    def _stream(self, path, version):
        f = self._find(path, version)
        return f, self._conn.request("GET", f"/api/nodes/{f['id']}/download", raw=True)

    def download(self, path, dest, version=None):
        """Write a version's bytes to ``dest`` (checked against its SHA-256 before it is
        renamed into place); returns its record."""
        f, resp = self._stream(path, version)
        rec = f["record"]
        dest = os.fspath(dest)
        tmp = f"{dest}.ml-dash-download-{os.getpid()}"
        h = hashlib.sha256()
        try:
            with resp, open(tmp, "wb") as out:
                while chunk := resp.read(_PIECE):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != rec["checksum"]:
                raise StoreError(f"download of {path}: the bytes do not match the record's SHA-256")
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return rec

    def read_bytes(self, path, version=None):
        """A version's bytes (checked against its SHA-256)."""
        f, resp = self._stream(path, version)
        with resp:
            data = resp.read()
        if hashlib.sha256(data).hexdigest() != f["record"]["checksum"]:
            raise StoreError(f"read of {path}: the bytes do not match the record's SHA-256")
        return data

    def open_file(self, path, version=None, buffer_size=1 << 20):
        """A buffered, seekable binary file object reading the version with range requests."""
        f = self._find(path, version)
        raw = _RangeFile(self._conn, f["id"], f["record"])
        out = io.BufferedReader(raw, buffer_size=buffer_size)
        out.record = raw.record
        return out

    def delete(self, path):
        """Soft-delete every version of the path; returns the records deleted."""
        f = self._find(path)
        return self._conn.request("DELETE", f"/api/nodes/{f['id']}")["records"]

    def update(self, path, description=None, tags=None, metadata=None):
        """Change the latest version's description, tags or metadata (None leaves it as is)."""
        f = self._find(path)
        change = {}
        if description is not None:
            change["description"] = description
        if tags is not None:
            change["tags"] = list(tags)
        if metadata is not None:
            change["metadata"] = metadata
        return self._conn.request("PATCH", f"/api/nodes/{f['id']}", change)["record"]

    def parameters(self):
        return _Parameters(self)

    def log(self, message, level="info", metadata=None):
        """Append a log line; returns it as a dict."""
        line = {"message": message, "level": level}
        if metadata is not None:
            line["metadata"] = metadata
        r = self._conn.request("POST", self._url("logs"), {"logs": [line]})
        return {"sequenceNumber": r["startSequence"], "level": level, "message": message, "metadata": metadata}

    def logs(self):
        """Every log line of the experiment."""
        out, offset = [], 0
        while True:
            r = self._conn.request("GET", self._url("logs") + f"?limit=10000&offset={offset}")
            for line in r["logs"]:
                line.pop("id", None)
                if line.get("metadata") is None:
                    line.pop("metadata", None)
                out.append(line)
            offset += len(r["logs"])
            if not r.get("hasMore") or not r["logs"]:
                return out

    def metric(self, name):
        return _Metric(self, name)

    def push(self, url=None, endpoint=None):
        raise StoreError("an experiment on a server is pushed by the server (`ml-dash serve --remote`)")

    def __repr__(self):
        return f"Experiment({self._name!r}, {self._project!r}, namespace={self._namespace!r}, remote={self.remote!r})"
