"""Raw HTTP against `ml-dash serve`: refusals (checksums, tokens, bad input), downloads with
ranges, a list while a large upload streams, concurrent large uploads, the memory of a
streamed upload, SIGTERM during an upload, and write-behind to S3 (Garage)."""

import hashlib
import json
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import (GiB, KiB, MiB, SRC_ROOT, Background, Server, assert_api_error, big, cli,
                      cli_json, crc32c, data_bytes, data_pieces, data_sha256, exp_folder,
                      file_fields,
                      list_files_gql, listing, make_token, multipart, open_experiment,
                      sha256_bytes, upload)

UNKNOWN_ID = "1000000000000000007"


def store_state(root, incoming=True):
    """What a refused request must leave unchanged: every version (deleted ones too), the
    manifests, events, journals and packs, the server's folder registrations and the tokens.
    incoming=False leaves out packs under their incoming name (`<id>.incoming`: an upload's
    own packs before its commit, which nothing lists)."""
    root = Path(root)
    st = {"list": listing(root)}
    for sub in ("manifests", "events", "journals", "packs"):
        d = root / sub
        st[sub] = sorted((p.name, p.stat().st_size) for p in d.iterdir()
                         if incoming or not p.name.endswith(".incoming")) if d.is_dir() else []
    for f in ("serve-nodes.jsonl", "tokens.json"):
        p = root / f
        st[f] = p.read_bytes() if p.exists() else None
    return st


def incoming_packs(root):
    return sorted(p.name for p in (Path(root) / "packs").iterdir() if p.name.endswith(".incoming"))


def wait_health(server, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        try:
            # The write-behind's state is shown to a caller with a valid token only.
            auth = {"Authorization": f"Bearer {server.token}"} if server.token else {}
            r = httpx.get(server.url + "/health", timeout=5, headers=auth)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server does not answer /health"
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------
# Checksums.


def test_checksum_mismatch_is_refused_and_stores_nothing(server):
    with server.http() as h:
        exp = open_experiment(h, "ns", "proj", "run")
        before = store_state(server.root)
        small = os.urandom(1000)
        r = upload(h, exp, "small.bin", small, checksum=sha256_bytes(small + b"x"))
        body = assert_api_error(r, 422)
        assert body["code"] == "CHECKSUM_MISMATCH"
        # Nothing visible changed (what the refused upload wrote to packs: see
        # test_refused_uploads_leave_nothing_on_disk).
        assert visible(store_state(server.root)) == visible(before)

        # A large one (ingested outside the store lock) whose last byte differs.
        size = 40 * MiB
        good = data_sha256("mismatch", size)
        pieces = list(data_pieces("mismatch", size))
        pieces[-1] = pieces[-1][:-1] + bytes([pieces[-1][-1] ^ 1])
        r = upload(h, exp, "large.bin", iter(pieces), checksum=good, size=size)
        body = assert_api_error(r, 422)
        assert body["code"] == "CHECKSUM_MISMATCH"

        assert list_files_gql(h, exp["id"]) == []
        r = h.get("/api/search/files", params={"pattern": "**/*.bin", "experimentId": exp["id"]})
        assert r.status_code == 200 and r.json()["files"] == []
        assert listing(server.root) == []
        assert visible(store_state(server.root)) == visible(before)
        # Whatever a refused upload wrote is garbage that gc reclaims (also while serving).
        cli(server.root, "gc")
        assert incoming_packs(server.root) == []

        # The refusals used no version number: the first good upload is version 1.
        r = upload(h, exp, "small.bin", small)
        assert r.status_code == 201, r.text
        assert r.json()["node"]["version"] == 1
    assert [(x["filename"], x["version"]) for x in listing(server.root)] == [("small.bin", 1)]
    assert cli(server.root, "verify").returncode == 0


def store_state_of(st):
    return {k: ([x for x in v if not x[0].endswith(".incoming")] if k == "packs" else v)
            for k, v in st.items()}


def visible(st):
    return {k: v for k, v in st.items() if k != "packs"}


def test_checks_after_the_file(server):
    """A client that hashes while it sends puts its check after the file: a SHA-256 `checksum`
    part (when none came before), or a `crc32c` part that a `trailer` part announced (what our
    CLI sends). A check that does not match the bytes refuses the upload and stores nothing;
    a missing announced check, a check nobody announced or a second checksum are bad input."""
    with server.http() as h:
        exp = open_experiment(h, "ns", "proj", "after")
        data = os.urandom(100 * KiB)
        good_sum, good_crc = sha256_bytes(data), f"{crc32c(data):08x}"
        assert crc32c(b"123456789") == 0xE3069283

        r = upload(h, exp, "sha.bin", data, checksum=None, after=[("checksum", good_sum)])
        assert r.status_code == 201, r.text
        assert r.json()["node"]["record"]["checksum"] == good_sum
        r = upload(h, exp, "crc.bin", data, checksum=None, before=[("trailer", "crc32c")],
                   after=[("crc32c", good_crc)])
        assert r.status_code == 201, r.text
        assert r.json()["node"]["record"]["checksum"] == good_sum
        # Both, in either order.
        r = upload(h, exp, "both.bin", data, checksum=None, before=[("trailer", "crc32c")],
                   after=[("crc32c", good_crc), ("checksum", good_sum)])
        assert r.status_code == 201, r.text
        assert r.headers.get("connection") != "close"
        before = store_state(server.root)

        bad_sum = sha256_bytes(data + b"x")
        bad_crc = f"{crc32c(data) ^ 1:08x}"
        refused = [
            (422, dict(after=[("checksum", bad_sum)])),
            (422, dict(before=[("trailer", "crc32c")], after=[("crc32c", bad_crc)])),
            (422, dict(before=[("trailer", "crc32c")],
                       after=[("crc32c", good_crc), ("checksum", bad_sum)])),
            (400, dict(before=[("trailer", "crc32c")])),
            (400, dict(after=[("crc32c", good_crc)])),
            (400, dict(before=[("trailer", "md5")], after=[("md5", "0" * 32)])),
            (400, dict(before=[("trailer", "crc32c")], after=[("crc32c", "xyz")])),
            (400, dict(after=[("checksum", good_sum), ("checksum", good_sum)])),
            (400, dict(after=[("description", "too late")])),
        ]
        for status, kw in refused:
            r = upload(h, exp, "refused.bin", data, checksum=None, **kw)
            body = assert_api_error(r, status)
            # Part of the body may be unread: the server closes the connection, and says so,
            # so that the client does not send its next request into it.
            assert r.headers.get("connection") == "close", (kw, r.headers)
            if status == 422:
                assert body["code"] == "CHECKSUM_MISMATCH", body
        # A checksum before the file leaves no room for another after it.
        r = upload(h, exp, "refused.bin", data, after=[("checksum", good_sum)])
        assert_api_error(r, 400)

        # A large upload (ingested outside the store lock) with a wrong check after it.
        size = 40 * MiB
        r = upload(h, exp, "large.bin", data_pieces("after", size), checksum=None, size=size,
                   before=[("trailer", "crc32c")], after=[("crc32c", "00000000")])
        assert assert_api_error(r, 422)["code"] == "CHECKSUM_MISMATCH"
        r = upload(h, exp, "large.bin", data_pieces("after", size), checksum=None, size=size,
                   after=[("checksum", "0" * 64)])
        assert assert_api_error(r, 422)["code"] == "CHECKSUM_MISMATCH"
        assert visible(store_state(server.root)) == visible(before)
    names = sorted(x["filename"] for x in listing(server.root))
    assert names == ["both.bin", "crc.bin", "sha.bin"]


def test_refused_uploads_leave_nothing_on_disk(server):
    size = 24 * MiB
    with server.http() as h:
        exp = open_experiment(h, "ns", "proj", "run")
        packs = store_state(server.root)["packs"]
        # 0. A small checksum mismatch.
        small = os.urandom(100 * KiB)
        r = upload(h, exp, "s.bin", small, checksum=sha256_bytes(b"other"))
        assert_api_error(r, 422)
        good = data_sha256("leak", size)
        # 1. Checksum mismatch.
        r = upload(h, exp, "a.bin", data_pieces("leak", size), checksum=sha256_bytes(b"other"),
                   size=size)
        assert_api_error(r, 422)
        # 2. A part after the file.
        headers, body = multipart(file_fields(exp, "b.bin", good), "b.bin",
                                  data_pieces("leak", size), size=size, trailer=False)
        late = (b"\r\n--" + headers["Content-Type"].split("=")[1].encode() +
                b"\r\nContent-Disposition: form-data; name=\"description\"\r\n\r\nlate\r\n--" +
                headers["Content-Type"].split("=")[1].encode() + b"--\r\n")
        headers["Content-Length"] = str(int(headers["Content-Length"]) + len(late))

        def with_late():
            yield from body
            yield late

        r = h.post("/api/namespaces/ns/nodes", content=with_late(), headers=headers)
        assert_api_error(r, 400)
    # 3. The client goes away before the end of the body.
    s = server
    data = data_bytes("leak", size)
    headers, full = multipart(file_fields(exp, "c.bin", good), "c.bin", data)
    head = (f"POST /api/namespaces/ns/nodes HTTP/1.1\r\nHost: {s.addr}\r\n"
            f"Authorization: Bearer {s.token}\r\nContent-Type: {headers['Content-Type']}\r\n")
    _short_body(s.addr, head, full[:-200], len(full))
    time.sleep(0.5)
    assert listing(server.root) == []
    assert incoming_packs(server.root) == [], "refused large uploads left their bytes on disk"
    assert store_state(server.root)["packs"] == packs, "a refused small upload grew a pack"


# ------------------------------------------------------------------------------------------
# Tokens.


def test_tokens_401_403_and_never_logged(server, workdir):
    root = server.root
    other_only = make_token(root, "other-only", ["other"])
    ns_only = make_token(root, "ns-only", ["ns"])
    wrong = "mld_" + "0" * 64
    secrets = [server.token, other_only, ns_only, wrong]
    bodies = []

    with server.http() as h:
        exp = open_experiment(h, "ns", "proj", "run", folders=["f1"])
        r = upload(h, exp, "a.txt", b"hello\n", tags=["t"])
        assert r.status_code == 201, r.text
        file_id = r.json()["node"]["id"]
        assert h.post(f"/api/experiments/{exp['id']}/parameters",
                      json={"data": {"lr": 1}}).status_code == 200
        assert h.post(f"/api/experiments/{exp['id']}/metrics/loss/append-batch",
                      json={"dataPoints": [{"v": 1.0}]}).status_code == 200
        assert h.post(f"/api/experiments/{exp['id']}/logs",
                      json={"logs": [{"level": "info", "message": "m"}]}).status_code == 200

    def requests_for(e, fid, ns):
        """(name, kind, method, path, kwargs): every route, reads and writes."""
        eid = e["id"]
        mp_headers, mp_body = multipart(file_fields(e, "b.txt", sha256_bytes(b"b")), "b.txt",
                                        b"b")
        return [
            ("graphql namespace", "read", "POST", "/graphql",
             {"json": {"query": "query($n: String!) { namespace(slug: $n) { projects { id slug } } }",
                       "variables": {"n": ns}}}),
            ("graphql experimentById", "read", "POST", "/graphql",
             {"json": {"query": "query($e: ID!) { experimentById(id: $e) { id name } }",
                       "variables": {"e": eid}}}),
            ("graphql files", "read", "POST", "/graphql",
             {"json": {"query": "query($e: ID!) { experimentById(id: $e) { filesPaginated(limit: 10, offset: 0) { files { id } } } }",
                       "variables": {"e": eid}}}),
            ("graphql experimentNode", "read", "POST", "/graphql",
             {"json": {"query": "query($e: ID!) { experimentNode(experimentId: $e) { id } }",
                       "variables": {"e": eid}}}),
            ("graphql project", "read", "POST", "/graphql",
             {"json": {"query": "query($n: String!, $p: String!) { project(namespaceSlug: $n, projectSlug: $p) { nodes(parentId: null, maxDepth: 10) { id } } }",
                       "variables": {"n": ns, "p": e["project"]}}}),
            ("get experiment node", "read", "GET", f"/api/nodes/{eid}", {}),
            ("get file node", "read", "GET", f"/api/nodes/{fid}", {}),
            ("download", "read", "GET", f"/api/nodes/{fid}/download", {}),
            ("get params", "read", "GET", f"/api/experiments/{eid}/parameters", {}),
            ("get logs", "read", "GET", f"/api/experiments/{eid}/logs", {}),
            ("list metrics", "read", "GET", f"/api/experiments/{eid}/metrics", {}),
            ("metric rows", "read", "GET", f"/api/experiments/{eid}/metrics/loss/rows", {}),
            ("metric stats", "read", "GET", f"/api/experiments/{eid}/metrics/loss/stats", {}),
            ("search in experiment", "read", "GET", "/api/search/files",
             {"params": {"pattern": "**/*", "experimentId": eid}}),
            ("create project", "write", "POST", f"/api/namespaces/{ns}/nodes",
             {"json": {"type": "PROJECT", "name": "p2", "slug": "p2"}}),
            ("create experiment", "write", "POST", f"/api/namespaces/{ns}/nodes",
             {"json": {"type": "EXPERIMENT", "name": "e2", "parentId": "ROOT",
                       "projectSlug": e["project"]}}),
            ("create folder", "write", "POST", f"/api/namespaces/{ns}/nodes",
             {"json": {"type": "FOLDER", "projectId": e["project_id"], "parentId": "ROOT",
                       "name": "f9"}}),
            ("create experiment folder", "write", "POST", f"/api/namespaces/{ns}/nodes",
             {"json": {"type": "FOLDER", "projectId": e["project_id"], "experimentId": eid,
                       "parentId": e["node_id"], "name": "sub"}}),
            ("upload", "write", "POST", f"/api/namespaces/{ns}/nodes",
             {"content": mp_body, "headers": mp_headers}),
            ("set params", "write", "POST", f"/api/experiments/{eid}/parameters",
             {"json": {"data": {"lr": 2}}}),
            ("append logs", "write", "POST", f"/api/experiments/{eid}/logs",
             {"json": {"logs": [{"level": "info", "message": "x"}]}}),
            ("append metrics", "write", "POST",
             f"/api/experiments/{eid}/metrics/loss/append-batch",
             {"json": {"dataPoints": [{"v": 2.0}]}}),
            ("append metric", "write", "POST", f"/api/experiments/{eid}/metrics/loss/append",
             {"json": {"data": {"v": 3.0}}}),
            ("status", "write", "PATCH", f"/api/nodes/{eid}", {"json": {"status": "FAILED"}}),
            ("update file", "write", "PATCH", f"/api/nodes/{fid}",
             {"json": {"description": "changed", "tags": []}}),
            ("delete file", "write", "DELETE", f"/api/nodes/{fid}", {}),
        ]

    reqs = requests_for(exp, file_id, "ns")
    before = store_state(root)

    def send(token, name, method, path, kw, headers=None):
        hd = dict(headers) if headers is not None else server.headers(token)
        hd.update(kw.get("headers", {}))
        kw = {k: v for k, v in kw.items() if k != "headers"}
        r = httpx.request(method, server.url + path, headers=hd, timeout=30, **kw)
        bodies.append(r.text)
        return r

    # No token, a wrong one, a malformed header: 401 everywhere but /health.
    for label, headers in [("none", {}), ("wrong", {"Authorization": f"Bearer {wrong}"}),
                           ("empty", {"Authorization": "Bearer"}),
                           ("basic", {"Authorization": f"Basic {server.token}"}),
                           ("bare", {"Authorization": server.token})]:
        for name, _, method, path, kw in reqs:
            r = send(None, name, method, path, kw, headers=headers)
            body = assert_api_error(r, 401)
            assert body["code"] == "UNAUTHORIZED", (label, name, body)
        r = httpx.get(server.url + "/health", headers=headers)
        assert r.status_code == 200
    r = httpx.get(server.url + "/api/no/such/route")
    assert_api_error(r, 401)

    # A token for namespace "other" only: 403 on every read and write in "ns".
    for name, kind, method, path, kw in reqs:
        r = send(other_only, name, method, path, kw)
        body = assert_api_error(r, 403)
        assert body["code"] == "FORBIDDEN", (name, body)
    assert store_state(root) == before

    # Listings across namespaces leave out what the token may not see.
    r = send(other_only, "search", "GET", "/api/search/files", {"params": {"pattern": "**/*"}})
    assert r.status_code == 200 and r.json()["files"] == []
    r = send(other_only, "projects", "POST", "/graphql", {"json": {
        "query": "{ projectsPaginated(limit: 100, offset: 0) { projects { slug } totalCount } }"}})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["projectsPaginated"]["projects"] == []

    # The limited tokens work where they may.
    with server.http(other_only) as h:
        oexp = open_experiment(h, "other", "proj", "run")
        r = upload(h, oexp, "o.txt", b"other\n")
        assert r.status_code == 201, r.text
        ofile = r.json()["node"]["id"]
        bodies.append(r.text)
    with server.http(ns_only) as h:
        for name, kind, method, path, kw in requests_for(oexp, ofile, "other"):
            r = send(ns_only, name, method, path, kw)
            assert_api_error(r, 403)
        r = h.get(f"/api/nodes/{file_id}")
        assert r.status_code == 200 and r.json()["name"] == "a.txt"
        r = h.post(f"/api/experiments/{exp['id']}/parameters", json={"data": {"by": "ns-only"}})
        assert r.status_code == 200
    assert {(x["namespace"], x["filename"]) for x in listing(root)} == {("ns", "a.txt"),
                                                                        ("other", "o.txt")}

    # A revoked token stops working at once.
    cli(root, "token", "revoke", "ns-only")
    with server.http(ns_only) as h:
        r = h.get(f"/api/nodes/{file_id}")
        bodies.append(r.text)
        assert_api_error(r, 401)

    # No secret is ever logged, echoed, or stored in clear.
    log = server.log_text()
    assert "GET /api/nodes/" in log  # the log has the requests...
    for s in secrets:
        assert s not in log, "a token secret is in the server's log"
        assert s[4:] not in log
        assert not any(s in b for b in bodies), "a token secret was echoed in a response"
        assert s.encode() not in (root / "tokens.json").read_bytes()


# ------------------------------------------------------------------------------------------
# Bad input: each is a 4xx {"error", "code"} and leaves the store unchanged.


@pytest.fixture(scope="module")
def table():
    """One server for the whole bad-input table (each case checks the store before/after)."""
    d = SRC_ROOT / f"bad-input-{uuid.uuid4().hex[:8]}"
    d.mkdir(parents=True)
    root = d / "store"
    token = make_token(root, "tester")
    s = Server(root, d / "serve.log", token=token).start()
    try:
        with s.http() as h:
            exp = open_experiment(h, "ns", "proj", "run", folders=["f1"])
            exp2 = open_experiment(h, "ns2", "proj", "run")
            efolder = exp_folder(h, exp, "ckpt")
            r = upload(h, exp, "a.txt", b"hello\n", parent=efolder)
            assert r.status_code == 201, r.text
            fid = r.json()["node"]["id"]
            e2folder = exp_folder(h, exp2, "other")
            assert h.post(f"/api/experiments/{exp['id']}/metrics/loss/append-batch",
                          json={"dataPoints": [{"v": 1.0}]}).status_code == 200
        yield {"server": s, "exp": exp, "exp2": exp2, "efolder": efolder, "file": fid,
               "e2folder": e2folder}
    finally:
        s.kill()
    if not os.environ.get("ML_DASH_SERVE_KEEP"):
        shutil.rmtree(d, ignore_errors=True)


def _node(t, body, ns="ns"):
    return ("POST", f"/api/namespaces/{ns}/nodes", {"json": body})


def _exp_body(t, name, **kw):
    return {"type": "EXPERIMENT", "name": name, "parentId": "ROOT",
            "projectId": t["exp"]["project_id"], **kw}


def _folder_body(t, name):
    return {"type": "FOLDER", "projectId": t["exp"]["project_id"], "parentId": "ROOT",
            "name": name}


def _efolder_body(t, name):
    e = t["exp"]
    return {"type": "FOLDER", "projectId": e["project_id"], "experimentId": e["id"],
            "parentId": e["node_id"], "name": name}


def _mp(t, name="x.bin", data=b"data", fields=None, checksum="auto", **kw):
    e = t["exp"]
    if checksum == "auto":
        checksum = sha256_bytes(data)
    fields = fields if fields is not None else file_fields(e, name, checksum, **kw)
    headers, body = multipart(fields, "x.bin", data)
    return ("POST", "/api/namespaces/ns/nodes", {"content": body, "headers": headers})


def _raw_mp(body, boundary="b0undary", ctype=None):
    return ("POST", "/api/namespaces/ns/nodes",
            {"content": body,
             "headers": {"Content-Type": ctype or f"multipart/form-data; boundary={boundary}"}})


def _mp_text(t, tail, boundary="b0undary", name="x.bin", data=b"data"):
    e = t["exp"]
    parts = file_fields(e, name, sha256_bytes(data))
    body = b""
    for k, v in parts:
        body += f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
    body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
             f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    return body + data + tail


def _gql(query, variables=None, raw=None):
    if raw is not None:
        return ("POST", "/graphql", {"content": raw, "headers": {"Content-Type": "application/json"}})
    return ("POST", "/graphql", {"json": {"query": query, "variables": variables or {}}})


BIG_META = json.dumps({"blob": "x" * (70 * KiB)})
HUGE_META = json.dumps({"blob": "x" * (200 * KiB)})

# (case id, expected status or None for any 4xx, request builder)
CASES = [
    # Names with "..", "/", NUL or control characters.
    ("experiment name ..", 400, lambda t: _node(t, _exp_body(t, ".."))),
    ("experiment name .", 400, lambda t: _node(t, _exp_body(t, "."))),
    ("experiment name NUL", 400, lambda t: _node(t, _exp_body(t, "a\x00b"))),
    ("experiment name control", 400, lambda t: _node(t, _exp_body(t, "a\x01b"))),
    ("experiment name newline", 400, lambda t: _node(t, _exp_body(t, "a\nb"))),
    ("experiment name slash", 400, lambda t: _node(t, _exp_body(t, "a/b"))),
    ("experiment name empty", 400, lambda t: _node(t, _exp_body(t, ""))),
    ("experiment name too long", 400, lambda t: _node(t, _exp_body(t, "x" * 300))),
    ("experiment in folder, name ..", 400, lambda t: _node(t, {
        "type": "EXPERIMENT", "name": "..", "parentId": "ROOT", "projectSlug": "proj"})),
    ("project slug ..", 400, lambda t: _node(t, {"type": "PROJECT", "name": "..", "slug": ".."})),
    ("project slug NUL", 400, lambda t: _node(t, {"type": "PROJECT", "name": "p", "slug": "p\x00"})),
    ("project slug control", 400, lambda t: _node(t, {"type": "PROJECT", "slug": "p\x1b[0m"})),
    ("projectSlug .. on experiment", 400, lambda t: _node(t, {
        "type": "EXPERIMENT", "name": "e", "parentId": "ROOT", "projectSlug": ".."})),
    ("projectSlug NUL on experiment", 400, lambda t: _node(t, {
        "type": "EXPERIMENT", "name": "e", "parentId": "ROOT", "projectSlug": "a\x00b"})),
    ("folder name ..", 400, lambda t: _node(t, _folder_body(t, ".."))),
    ("folder name NUL", 400, lambda t: _node(t, _folder_body(t, "f\x00"))),
    ("folder name control", 400, lambda t: _node(t, _folder_body(t, "f\x07"))),
    ("folder name slash", 400, lambda t: _node(t, _folder_body(t, "a/../b"))),
    ("experiment folder name ..", 400, lambda t: _node(t, _efolder_body(t, ".."))),
    ("experiment folder name NUL", 400, lambda t: _node(t, _efolder_body(t, "a\x00"))),
    ("experiment folder name DEL", 400, lambda t: _node(t, _efolder_body(t, "a\x7f"))),
    ("namespace ..", 400, lambda t: ("POST", "/api/namespaces/%2E%2E/nodes",
                                     {"json": _exp_body(t, "e")})),
    ("namespace NUL", 400, lambda t: ("POST", "/api/namespaces/a%00b/nodes",
                                      {"json": {"type": "PROJECT", "slug": "p"}})),
    ("namespace control", 400, lambda t: ("POST", "/api/namespaces/a%0Ab/nodes",
                                          {"json": {"type": "PROJECT", "slug": "p"}})),
    ("file name ..", 400, lambda t: _mp(t, name="..")),
    ("file name NUL", 400, lambda t: _mp(t, name="a\x00b")),
    ("file name control", 400, lambda t: _mp(t, name="a\x07b")),
    ("file name newline", 400, lambda t: _mp(t, name="a\rb")),
    ("file name slash", 400, lambda t: _mp(t, name="../escape")),
    ("file name too long", 400, lambda t: _mp(t, name="n" * 256)),
    ("tag with NUL", 400, lambda t: _mp(t, tags=["ok", "b\x00d"])),
    # Metadata.
    ("metadata over 64 KiB", 400, lambda t: _mp(t, metadata=BIG_META)),
    ("metadata over the part limit", 413, lambda t: _mp(t, metadata=HUGE_META)),
    ("metadata malformed JSON", 400, lambda t: _mp(t, metadata='{"k": [1, 2}')),
    ("metadata not an object", 400, lambda t: _mp(t, metadata="[1, 2]")),
    ("metadata not UTF-8", 400, lambda t: _mp(t, fields=file_fields(
        t["exp"], "x.bin", sha256_bytes(b"data"))[:-1] + [
        ("checksum", sha256_bytes(b"data")), ("metadata", b'{"k": "\xff\xfe"}')])),
    ("experiment metadata over 64 KiB", 400, lambda t: _node(t, _exp_body(
        t, "e", metadata={"blob": "x" * (70 * KiB)}))),
    ("experiment metadata not an object", 400, lambda t: _node(t, _exp_body(t, "e", metadata=[1]))),
    # Malformed multipart.
    ("multipart without boundary", 400, lambda t: _raw_mp(_mp_text(t, b"\r\n--b0undary--\r\n"),
                                                          ctype="multipart/form-data")),
    ("multipart wrong boundary", 400, lambda t: _raw_mp(_mp_text(t, b"\r\n--b0undary--\r\n"),
                                                        boundary="other")),
    ("multipart truncated in the file", 400, lambda t: _raw_mp(
        _mp_text(t, b"", data=b"some bytes of a file that stop"))),
    ("multipart truncated in a field", 400, lambda t: _raw_mp(
        b"--b0undary\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\nFI")),
    ("multipart part after the file", 400, lambda t: _raw_mp(_mp_text(
        t, b"\r\n--b0undary\r\nContent-Disposition: form-data; name=\"description\"\r\n\r\n"
           b"late\r\n--b0undary--\r\n"))),
    ("multipart no file part", 400, lambda t: _raw_mp(
        b"--b0undary\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\nFILE\r\n"
        b"--b0undary--\r\n")),
    ("multipart garbage", 400, lambda t: _raw_mp(b"this is not multipart at all")),
    ("multipart field twice", 400, lambda t: _mp(t, fields=file_fields(
        t["exp"], "x.bin", sha256_bytes(b"data")) + [("name", "y.bin")])),
    ("multipart too many fields", 400, lambda t: _mp(t, fields=[
        (f"x{i}", "v") for i in range(40)] + file_fields(t["exp"], "x.bin", sha256_bytes(b"data")))),
    ("multipart checksum not hex", 400, lambda t: _mp(t, checksum="zz" * 32)),
    ("multipart checksum short", 400, lambda t: _mp(t, checksum="ab" * 16)),
    ("multipart type FOLDER", 400, lambda t: _mp(t, fields=[("type", "FOLDER")] + file_fields(
        t["exp"], "x.bin", sha256_bytes(b"data"))[1:])),
    ("multipart no experimentId", 400, lambda t: _mp(t, fields=[
        ("type", "FILE"), ("name", "x.bin"), ("checksum", sha256_bytes(b"data"))])),
    ("multipart experiment of another namespace", 400, lambda t: (
        "POST", "/api/namespaces/ns/nodes",
        dict(zip(("headers", "content"), multipart(
            file_fields(t["exp2"], "x.bin", sha256_bytes(b"data")), "x.bin", b"data"))))),
    ("multipart parent of another experiment", 404, lambda t: _mp(
        t, fields=file_fields(t["exp"], "x.bin", sha256_bytes(b"data"), parent=t["e2folder"]))),
    ("multipart parent unknown", 404, lambda t: _mp(
        t, fields=file_fields(t["exp"], "x.bin", sha256_bytes(b"data"), parent=UNKNOWN_ID))),
    # Unknown ids.
    ("get unknown node", 404, lambda t: ("GET", f"/api/nodes/{UNKNOWN_ID}", {})),
    ("download unknown node", 404, lambda t: ("GET", f"/api/nodes/{UNKNOWN_ID}/download", {})),
    ("patch unknown node", 404, lambda t: ("PATCH", f"/api/nodes/{UNKNOWN_ID}",
                                           {"json": {"status": "COMPLETED"}})),
    ("delete unknown node", 404, lambda t: ("DELETE", f"/api/nodes/{UNKNOWN_ID}", {})),
    ("params of unknown experiment", 404, lambda t: (
        "POST", f"/api/experiments/{UNKNOWN_ID}/parameters", {"json": {"data": {"a": 1}}})),
    ("get params of unknown experiment", 404, lambda t: (
        "GET", f"/api/experiments/{UNKNOWN_ID}/parameters", {})),
    ("logs of unknown experiment", 404, lambda t: (
        "POST", f"/api/experiments/{UNKNOWN_ID}/logs", {"json": {"logs": []}})),
    ("metrics of unknown experiment", 404, lambda t: (
        "POST", f"/api/experiments/{UNKNOWN_ID}/metrics/m/append-batch",
        {"json": {"dataPoints": [{"v": 1}]}})),
    ("rows of unknown metric", 404, lambda t: (
        "GET", f"/api/experiments/{t['exp']['id']}/metrics/nope/rows", {})),
    ("experiment node id is a folder", 404, lambda t: (
        "POST", f"/api/experiments/{t['efolder']}/parameters", {"json": {"data": {"a": 1}}})),
    ("upload to unknown experiment", 404, lambda t: _mp(t, fields=[
        ("type", "FILE"), ("experimentId", UNKNOWN_ID), ("name", "x.bin")])),
    ("folder in unknown project", 404, lambda t: _node(t, {
        "type": "FOLDER", "projectId": UNKNOWN_ID, "parentId": "ROOT", "name": "f"})),
    ("experiment under unknown parent", 404, lambda t: _node(t, _exp_body(
        t, "e", parentId=UNKNOWN_ID))),
    ("unknown route", 404, lambda t: ("GET", "/api/nothing/here", {})),
    ("method not allowed", 405, lambda t: ("PUT", f"/api/nodes/{t['file']}", {"json": {}})),
    ("graphql by GET", 405, lambda t: ("GET", "/graphql", {"params": {"query": "{ me { username } }"}})),
    # Ids that are not ids.
    ("non-numeric node id", 400, lambda t: ("GET", "/api/nodes/abc", {})),
    ("negative node id", 400, lambda t: ("GET", "/api/nodes/-1", {})),
    ("float node id", 400, lambda t: ("GET", "/api/nodes/1e18", {})),
    ("overlong node id", 400, lambda t: ("GET", "/api/nodes/" + "9" * 25, {})),
    ("non-numeric download id", 400, lambda t: ("GET", "/api/nodes/abc/download", {})),
    ("non-numeric delete id", 400, lambda t: ("DELETE", "/api/nodes/x1", {})),
    ("non-numeric experiment id", 400, lambda t: (
        "POST", "/api/experiments/abc/parameters", {"json": {"data": {"a": 1}}})),
    ("non-numeric search experimentId", 400, lambda t: (
        "GET", "/api/search/files", {"params": {"pattern": "*", "experimentId": "abc"}})),
    ("non-numeric upload experimentId", 400, lambda t: _mp(t, fields=[
        ("type", "FILE"), ("experimentId", "abc"), ("name", "x.bin")])),
    ("numeric projectId", 400, lambda t: _node(t, {
        "type": "EXPERIMENT", "name": "e", "parentId": "ROOT", "projectId": 12})),
    ("non-numeric limit", 400, lambda t: ("GET", "/api/search/files", {"params": {"limit": "x"}})),
    ("bad metric cursor", 400, lambda t: (
        "GET", f"/api/experiments/{t['exp']['id']}/metrics/loss/rows", {"params": {"cursor": "zz"}})),
    # GraphQL outside the schema, mutations, malformed requests.
    ("graphql unknown root field", 400, lambda t: _gql("{ users { id } }")),
    ("graphql unknown nested field", 400, lambda t: _gql(
        "query($e: ID!) { experimentById(id: $e) { id secret } }", {"e": t["exp"]["id"]})),
    ("graphql introspection", 400, lambda t: _gql("{ __schema { types { name } } }")),
    ("graphql mutation", 400, lambda t: _gql(
        'mutation { deleteProject(id: "1") { id } }')),
    ("graphql mutation of a known field", 400, lambda t: _gql(
        'mutation M($e: ID!) { experimentById(id: $e) { id } }', {"e": t["exp"]["id"]})),
    ("graphql subscription", 400, lambda t: _gql("subscription { me { username } }")),
    ("graphql syntax error", 400, lambda t: _gql("query { experimentById(id: ")),
    ("graphql empty document", 400, lambda t: _gql("")),
    ("graphql unknown fragment", 400, lambda t: _gql("{ ...Nope }")),
    ("graphql fragment cycle", 400, lambda t: _gql(
        "{ me { ...A } } fragment A on User { ...B } fragment B on User { ...A }")),
    ("graphql deep nesting", 400, lambda t: _gql("{" + "me {" * 5000 + "username" + "}" * 5001)),
    ("graphql bad id argument", 400, lambda t: _gql('{ experimentById(id: "abc") { id } }')),
    ("graphql two operations", 400, lambda t: _gql("query A { me { username } } query B { me { username } }")),
    ("graphql unknown operationName", 400, lambda t: (
        "POST", "/graphql", {"json": {"query": "query A { me { username } }",
                                      "operationName": "B"}})),
    ("graphql query not a string", 400, lambda t: ("POST", "/graphql", {"json": {"query": 5}})),
    ("graphql variables not an object", 400, lambda t: (
        "POST", "/graphql", {"json": {"query": "{ me { username } }", "variables": [1]}})),
    ("graphql body malformed JSON", 400, lambda t: _gql(None, raw=b'{"query": ')),
    ("graphql body not an object", 400, lambda t: _gql(None, raw=b'["{ me { username } }"]')),
    ("graphql body too large", 413, lambda t: _gql("{ me { username } }" + " " * (300 * KiB))),
    # Malformed JSON bodies.
    ("node body malformed", 400, lambda t: ("POST", "/api/namespaces/ns/nodes",
                                            {"content": b'{"type": "PROJECT", ',
                                             "headers": {"Content-Type": "application/json"}})),
    ("node body not UTF-8", 400, lambda t: ("POST", "/api/namespaces/ns/nodes",
                                            {"content": b'{"type": "PROJECT", "slug": "\xff"}',
                                             "headers": {"Content-Type": "application/json"}})),
    ("node body a list", 400, lambda t: ("POST", "/api/namespaces/ns/nodes", {"json": [1, 2]})),
    ("node body empty", 400, lambda t: ("POST", "/api/namespaces/ns/nodes", {"content": b""})),
    ("node type unknown", 400, lambda t: _node(t, {"type": "ROOTKIT", "name": "x"})),
    ("node type FILE as JSON", 400, lambda t: _node(t, {"type": "FILE", "name": "x"})),
    ("node body too large", 413, lambda t: _node(t, _exp_body(t, "e", description="d" * (2 * MiB)))),
    ("params malformed", 400, lambda t: ("POST", f"/api/experiments/{t['exp']['id']}/parameters",
                                         {"content": b"{bad json"})),
    ("params data not an object", 400, lambda t: (
        "POST", f"/api/experiments/{t['exp']['id']}/parameters", {"json": {"data": [1]}})),
    ("logs malformed", 400, lambda t: ("POST", f"/api/experiments/{t['exp']['id']}/logs",
                                       {"content": b'{"logs": [}'})),
    ("logs not a list", 400, lambda t: ("POST", f"/api/experiments/{t['exp']['id']}/logs",
                                        {"json": {"logs": "hello"}})),
    ("log line without message", 400, lambda t: (
        "POST", f"/api/experiments/{t['exp']['id']}/logs",
        {"json": {"logs": [{"level": "info", "message": "ok"}, {"level": "info"}]}})),
    ("metrics malformed", 400, lambda t: (
        "POST", f"/api/experiments/{t['exp']['id']}/metrics/loss/append-batch",
        {"content": b'{"dataPoints": [{"v": 1.0},'})),
    ("metric points not a list", 400, lambda t: (
        "POST", f"/api/experiments/{t['exp']['id']}/metrics/loss/append-batch",
        {"json": {"dataPoints": {"v": 1}}})),
    ("metric point not an object", 400, lambda t: (
        "POST", f"/api/experiments/{t['exp']['id']}/metrics/loss/append-batch",
        {"json": {"dataPoints": [{"v": 1}, 5]}})),
    ("metric name with NUL", 400, lambda t: (
        "POST", f"/api/experiments/{t['exp']['id']}/metrics/a%00b/append-batch",
        {"json": {"dataPoints": [{"v": 1}]}})),
    ("patch malformed", 400, lambda t: ("PATCH", f"/api/nodes/{t['exp']['id']}",
                                        {"content": b"{"})),
    ("patch unknown status", 400, lambda t: ("PATCH", f"/api/nodes/{t['exp']['id']}",
                                             {"json": {"status": "EXPLODED"}})),
    ("patch file tags not a list", 400, lambda t: ("PATCH", f"/api/nodes/{t['file']}",
                                                   {"json": {"tags": "a,b"}})),
    ("patch file metadata over 64 KiB", 400, lambda t: (
        "PATCH", f"/api/nodes/{t['file']}", {"json": {"metadata": {"b": "x" * (70 * KiB)}}})),
    ("patch folder", 400, lambda t: ("PATCH", f"/api/nodes/{t['efolder']}",
                                     {"json": {"description": "x"}})),
    ("delete an experiment", 400, lambda t: ("DELETE", f"/api/nodes/{t['exp']['id']}", {})),
]


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_bad_input(table, case):
    status, build = {c[0]: (c[1], c[2]) for c in CASES}[case]
    s = table["server"]
    method, path, kw = build(table)
    before = store_state(s.root)
    with s.http() as h:
        r = h.request(method, path, **kw)
    body = assert_api_error(r, status)
    if path == "/graphql" and case not in ("graphql body malformed JSON",
                                           "graphql body too large", "graphql by GET"):
        assert isinstance(body.get("errors"), list) and body["errors"], body
    assert store_state(s.root) == before
    assert wait_health(s)["status"] == "ok"


def _short_body(addr, head, body, declared):
    """Send `head` with Content-Length `declared`, then fewer bytes, then close our side.
    Returns the status line the server answered, or None if it answered nothing."""
    host, port = addr.split(":")
    s = socket.create_connection((host, int(port)), timeout=20)
    try:
        s.sendall(head.encode() + f"Content-Length: {declared}\r\n\r\n".encode() + body)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            try:
                b = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not b:
                break
            got += b
    finally:
        s.close()
    return got.split(b"\r\n", 1)[0].decode() if got else None


@pytest.mark.parametrize("what", ["json", "multipart", "multipart-large"])
def test_body_shorter_than_content_length(table, what):
    s = table["server"]
    e = table["exp"]
    auth = f"Authorization: Bearer {s.token}\r\n"
    if what == "json":
        body = json.dumps({"data": {"cut": 1}}).encode()
        head = (f"POST /api/experiments/{e['id']}/parameters HTTP/1.1\r\nHost: {s.addr}\r\n"
                f"{auth}Content-Type: application/json\r\n")
        sent, declared = body[:-3], len(body)
    else:
        size = 1000 if what == "multipart" else 40 * MiB
        data = data_bytes("short", size)
        headers, full = multipart(file_fields(e, f"cut-{what}.bin", sha256_bytes(data)),
                                  "cut.bin", data)
        head = (f"POST /api/namespaces/ns/nodes HTTP/1.1\r\nHost: {s.addr}\r\n{auth}"
                f"Content-Type: {headers['Content-Type']}\r\n")
        # Everything but the last 200 bytes: the file part ends early.
        sent, declared = full[:-200], len(full)
    before = store_state(s.root)
    status = _short_body(s.addr, head, sent, declared)
    # No answer (the connection is closed) or a 4xx; never a success.
    assert status is None or status.split()[1].startswith("4"), status
    time.sleep(0.3)
    assert wait_health(s)["status"] == "ok"
    # Nothing visible changed (packs under their incoming name: see
    # test_refused_uploads_leave_nothing_on_disk).
    assert store_state(s.root, incoming=False) == store_state_of(before)


# ------------------------------------------------------------------------------------------
# Downloads.


def test_download_ranges_etag_length(server):
    size = 5 * MiB + 3
    data = data_bytes("ranges", size)
    digest = sha256_bytes(data)
    with server.http() as h:
        exp = open_experiment(h, "ns", "proj", "run")
        r = upload(h, exp, "blob.bin", data)
        assert r.status_code == 201, r.text
        fid = r.json()["node"]["id"]
        r = upload(h, exp, "empty.bin", b"")
        assert r.status_code == 201, r.text
        empty = r.json()["node"]["id"]

        r = h.get(f"/api/nodes/{fid}/download")
        assert r.status_code == 200
        assert r.headers["content-length"] == str(size)
        assert r.headers["etag"] == f'"{digest}"'
        assert r.headers.get("accept-ranges") == "bytes"
        assert sha256_bytes(r.content) == digest
        info = h.get(f"/api/nodes/{fid}").json()
        assert info["physicalFile"]["checksum"] == digest
        assert int(info["physicalFile"]["sizeBytes"]) == size

        for spec, (s, e) in [("bytes=0-99", (0, 99)), ("bytes=100-", (100, size - 1)),
                             ("bytes=-100", (size - 100, size - 1)),
                             ("bytes=4194000-4194999", (4194000, 4194999)),
                             ("bytes=1000-99999999999", (1000, size - 1)),
                             ("bytes=-99999999999", (0, size - 1)),
                             (f"bytes={size - 1}-{size - 1}", (size - 1, size - 1))]:
            r = h.get(f"/api/nodes/{fid}/download", headers={"Range": spec})
            assert r.status_code == 206, (spec, r.status_code)
            assert r.headers["content-range"] == f"bytes {s}-{e}/{size}", spec
            assert r.headers["content-length"] == str(e - s + 1), spec
            assert r.headers["etag"] == f'"{digest}"'
            assert r.content == data[s:e + 1], spec

        for spec in [f"bytes={size}-", f"bytes={size + 10}-{size + 20}"]:
            r = h.get(f"/api/nodes/{fid}/download", headers={"Range": spec})
            assert r.status_code == 416, (spec, r.status_code)
            assert r.headers["content-range"] == f"bytes */{size}"
            assert_api_error(r, 416)

        r = h.get(f"/api/nodes/{fid}/download", headers={"If-None-Match": f'"{digest}"'})
        assert r.status_code == 304 and r.content == b""

        r = h.get(f"/api/nodes/{empty}/download")
        assert r.status_code == 200 and r.content == b""
        assert r.headers["content-length"] == "0"
        assert r.headers["etag"] == f'"{sha256_bytes(b"")}"'
        r = h.get(f"/api/nodes/{empty}/download", headers={"Range": "bytes=0-0"})
        assert r.status_code == 416

        # A deleted file is not served.
        assert h.delete(f"/api/nodes/{fid}").status_code == 200
        assert_api_error(h.get(f"/api/nodes/{fid}/download"), 404)
        assert_api_error(h.get(f"/api/nodes/{fid}/download", headers={"Range": "bytes=0-9"}), 404)


# ------------------------------------------------------------------------------------------
# Concurrency and streaming.


class Paused:
    """An upload body: `size` bytes of (seed) in 1 MiB pieces that stops after `pause_at`
    bytes until `go` is set (`reached` is set when it gets there), then sends the rest, each
    piece after `delay` seconds."""

    def __init__(self, seed, size, pause_at, delay=0.0, piece=MiB):
        self.seed, self.size, self.pause_at, self.delay, self.piece = seed, size, pause_at, delay, piece
        self.reached = threading.Event()
        self.go = threading.Event()
        self.sent = 0

    def __iter__(self):
        for p in data_pieces(self.seed, self.size, self.piece):
            if self.sent >= self.pause_at and not self.go.is_set():
                self.reached.set()
                assert self.go.wait(120), "the test never resumed the upload"
            elif self.sent >= self.pause_at and self.delay:
                time.sleep(self.delay)
            yield p
            self.sent += len(p)


def test_list_answers_while_a_large_upload_streams(server, record):
    size = 96 * MiB
    digest = data_sha256("slow", size)
    with server.http() as h:
        exp = open_experiment(h, "ns", "proj", "run")
        assert upload(h, exp, "first.txt", b"first\n").status_code == 201

    body = Paused("slow", size, pause_at=48 * MiB)

    def big_upload():
        with server.http() as h2:
            return upload(h2, exp, "big.bin", body, checksum=digest, size=size)

    up = Background(big_upload)
    up.start()
    assert body.reached.wait(60), "the upload did not get going"
    time.sleep(0.5)  # let the server take in what was sent
    lat = {}
    with server.http() as h:
        t = time.monotonic()
        files = list_files_gql(h, exp["id"])
        lat["graphql ListExperimentFilesPaginated"] = time.monotonic() - t
        assert [f["name"] for f in files] == ["first.txt"]
        t = time.monotonic()
        r = h.get("/api/search/files", params={"pattern": "**/*", "experimentId": exp["id"]})
        lat["GET /api/search/files"] = time.monotonic() - t
        assert r.status_code == 200 and [f["name"] for f in r.json()["files"]] == ["first.txt"]
        t = time.monotonic()
        r = upload(h, exp, "small.txt", b"small upload meanwhile\n")
        lat["small upload"] = time.monotonic() - t
        assert r.status_code == 201, r.text
    t = time.monotonic()
    live = cli_json(server.root, "list")
    lat["ml-dash list (CLI process)"] = time.monotonic() - t
    assert {x["filename"] for x in live} == {"first.txt", "small.txt"}
    assert up.is_alive() and not body.go.is_set(), "the upload was not in flight"
    for k, v in lat.items():
        record(f"latency during a streaming upload: {k} (ms)", round(v * 1000, 1))
        assert v < 10, (k, v)

    body.go.set()
    r = up.outcome(120)
    assert r.status_code == 201, r.text
    assert r.json()["physicalFile"]["checksum"] == digest
    with server.http() as h:
        assert sorted(f["name"] for f in list_files_gql(h, exp["id"])) == [
            "big.bin", "first.txt", "small.txt"]


def test_concurrent_uploads_of_one_path_get_consecutive_versions(server):
    """Six small uploads (under the store lock) and three of 24 MiB (outside it) of the same
    path at once: all succeed, with versions 1..9, each holding what was sent."""
    with server.http() as h:
        exp = open_experiment(h, "ns", "proj", "run")
    jobs = [(f"small-{i}", 10 * KiB + i) for i in range(6)] + \
        [(f"large-{i}", 24 * MiB + i) for i in range(3)]
    sums = {seed: data_sha256(seed, n) for seed, n in jobs}

    def one(seed, n):
        with server.http() as h:
            return upload(h, exp, "same.bin", data_pieces(seed, n, MiB), checksum=sums[seed],
                          size=n)

    ups = [Background(one, seed, n) for seed, n in jobs]
    for u in ups:
        u.start()
    got = {}
    for (seed, n), u in zip(jobs, ups):
        r = u.outcome(300)
        assert r.status_code == 201, r.text
        got[r.json()["node"]["version"]] = sums[seed]
    assert sorted(got) == list(range(1, 10))
    recs = listing(server.root)
    assert {r["version"]: r["checksum"] for r in recs} == got
    (live,) = cli_json(server.root, "list")
    assert live["version"] == 9
    with server.http() as h:
        (f,) = list_files_gql(h, exp["id"])
        assert f["physicalFile"]["checksum"] == got[9]
    assert cli(server.root, "verify").returncode == 0


@pytest.mark.big
def test_four_concurrent_large_uploads(server, record):
    size = big(512 * MiB)
    seeds = [f"writer-{i}" for i in range(4)]
    hashers = [Background(data_sha256, s, size) for s in seeds]
    for b in hashers:
        b.start()
    digests = [b.outcome(300) for b in hashers]

    with server.http() as h:
        exps = [open_experiment(h, "ns", "proj", f"writer{i}") for i in range(4)]

    sent_sha = [hashlib.sha256() for _ in seeds]

    def body(i):
        for p in data_pieces(seeds[i], size, 4 * MiB):
            sent_sha[i].update(p)
            yield p

    def one(i):
        with server.http(timeout=600) as h:
            return upload(h, exps[i], f"model-{i}.bin", body(i), checksum=digests[i], size=size)

    t = time.monotonic()
    ups = [Background(one, i) for i in range(4)]
    for u in ups:
        u.start()
    # verify while the uploads stream in (it only reads; their packs are still incoming).
    time.sleep(1.0)
    during = cli(server.root, "verify", "--json", timeout=900)
    assert json.loads(during.stdout)["ok"], during.stdout
    record("uploads still streaming when verify finished", sum(u.is_alive() for u in ups))
    results = [u.outcome(900) for u in ups]
    took = time.monotonic() - t
    record(f"4 concurrent uploads of {size // MiB} MiB (s)", round(took, 2))
    record(f"4 concurrent uploads of {size // MiB} MiB (MB/s total)",
           round(4 * size / took / 1e6, 1))
    for i, r in enumerate(results):
        assert r.status_code == 201, r.text
        assert sent_sha[i].hexdigest() == digests[i]
        pf = r.json()["physicalFile"]
        assert (pf["checksum"], int(pf["sizeBytes"])) == (digests[i], size)

    live = cli_json(server.root, "list")
    assert sorted((x["experiment"], x["filename"], x["checksum"]) for x in live) == sorted(
        (f"writer{i}", f"model-{i}.bin", digests[i]) for i in range(4))
    v = cli(server.root, "verify", "--json", timeout=900)  # while the server runs
    rep = json.loads(v.stdout)
    assert rep["ok"] and rep["versions"] == 4, rep
    # One back, streamed.
    with server.http(timeout=600) as h:
        fid = results[2].json()["node"]["id"]
        dh = hashlib.sha256()
        with h.stream("GET", f"/api/nodes/{fid}/download") as r:
            assert r.status_code == 200
            for b in r.iter_raw(4 * MiB):
                dh.update(b)
        assert dh.hexdigest() == digests[2]


@pytest.mark.big
def test_streamed_upload_memory(server, record):
    size = big(3 * GiB)
    digest = data_sha256("memory", size)
    with server.http() as h:
        exp = open_experiment(h, "ns", "proj", "run")
        # Warm the server up (threads, pools) before the baseline.
        assert upload(h, exp, "warm.bin", data_bytes("warm", 2 * MiB)).status_code == 201
    base = server.proc_status("VmHWM")
    samples = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                samples.append(server.proc_status("VmRSS"))
            except (OSError, KeyError):
                break
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.monotonic()
    try:
        with server.http(timeout=600) as h:
            r = upload(h, exp, "huge.bin", data_pieces("memory", size, 8 * MiB),
                       checksum=digest, size=size)
    finally:
        stop.set()
        sampler.join()
    took = time.monotonic() - t
    assert r.status_code == 201, r.text
    assert r.json()["physicalFile"]["checksum"] == digest
    hwm = server.proc_status("VmHWM")
    record(f"server VmHWM before the {size // MiB} MiB upload (MiB)", round(base / MiB, 1))
    record(f"server VmHWM after the {size // MiB} MiB upload (MiB)", round(hwm / MiB, 1))
    record(f"server max sampled VmRSS during the upload (MiB)", round(max(samples) / MiB, 1))
    record(f"streamed upload of {size // MiB} MiB (MB/s)", round(size / took / 1e6, 1))
    assert hwm < 400 * MiB, f"peak RSS {hwm / MiB:.0f} MiB during a {size // MiB} MiB upload"

    # And a streamed download of it.
    fid = r.json()["node"]["id"]
    dh = hashlib.sha256()
    t = time.monotonic()
    with server.http(timeout=600) as h:
        with h.stream("GET", f"/api/nodes/{fid}/download") as resp:
            assert resp.status_code == 200
            assert resp.headers["content-length"] == str(size)
            for b in resp.iter_raw(8 * MiB):
                dh.update(b)
    took = time.monotonic() - t
    assert dh.hexdigest() == digest
    hwm2 = server.proc_status("VmHWM")
    record(f"server VmHWM after also downloading it (MiB)", round(hwm2 / MiB, 1))
    record(f"streamed download of {size // MiB} MiB (MB/s)", round(size / took / 1e6, 1))
    assert hwm2 < 400 * MiB


# ------------------------------------------------------------------------------------------
# SIGTERM.


@pytest.mark.parametrize("finishes", [True, False], ids=["finishes-in-grace", "cut-off"])
def test_sigterm_during_an_upload(make_server, workdir, finishes, record):
    root = workdir / "store"
    token = make_token(root, "tester")
    s = make_server(root=root, token=token, args=["--shutdown-grace", "2"])
    size = 64 * MiB
    digest = data_sha256("sigterm", size)
    with s.http() as h:
        exp = open_experiment(h, "ns", "proj", "run")
        assert upload(h, exp, "before.txt", b"before\n").status_code == 201
    # Finishing: the rest follows at once. Cut off: 1 MiB every 0.25 s, 8+ s in all.
    body = Paused("sigterm", size, pause_at=24 * MiB, delay=0 if finishes else 0.25)

    def go():
        with s.http() as h2:
            return upload(h2, exp, "during.bin", body, checksum=digest, size=size)

    up = Background(go)
    up.start()
    assert body.reached.wait(60)
    time.sleep(0.3)
    t = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    body.go.set()
    try:
        rc = s.proc.wait(2 + 15)
    except Exception:
        s.kill()
        raise AssertionError("the server did not exit within its grace (2 s) + 15 s")
    took = time.monotonic() - t
    record(f"exit after SIGTERM with an upload in flight ({'finishes' if finishes else 'cut off'}) (s)",
           round(took, 2))
    assert rc == 0, f"exit status {rc}\n{s.log_text()[-2000:]}"
    up.join(30)
    assert not up.is_alive()
    if finishes:
        assert up.error is None, repr(up.error)
        assert up.result.status_code == 201, up.result.text
    elif up.error is None:
        # An answer for a body that never ended can only be a refusal.
        assert up.result.status_code != 201, up.result.text
    stored = {x["filename"]: x for x in listing(root)}
    if finishes:
        assert stored["during.bin"]["checksum"] == digest and not stored["during.bin"]["deletedAt"]
    else:
        assert set(stored) == {"before.txt"}, stored
    v = cli(root, "verify", "--json")
    rep = json.loads(v.stdout)
    assert rep["ok"] and not rep["problems"], rep
    # After a restart the server answers the same.
    s2 = make_server(root=root, token=token)
    with s2.http() as h:
        names = sorted(f["name"] for f in list_files_gql(h, exp["id"]))
    assert names == (["before.txt", "during.bin"] if finishes else ["before.txt"])
    left = [p.name for p in (root / "packs").iterdir() if p.name.endswith(".incoming")]
    record(f"incoming packs left after SIGTERM ({'finishes' if finishes else 'cut off'})",
           len(left))


# ------------------------------------------------------------------------------------------
# Write-behind to S3 (Garage).


def _s3_url():
    if os.environ.get("ML_DASH_S3_TEST") != "1":
        pytest.skip("ML_DASH_S3_TEST is not set: run `scripts/garage.sh start && "
                    ". target/garage/env` first")
    return f"s3://{os.environ['ML_DASH_S3_BUCKET']}/serve-test-{uuid.uuid4().hex[:12]}"


def _pushed(s, after=0, timeout=60):
    """Wait until /health says the write-behind has nothing pending (and has pushed more
    than `after` times); returns its status."""
    deadline = time.monotonic() + timeout
    while True:
        st = wait_health(s)["push"]
        if not st["pending"] and not st["pushing"] and st["pushes"] > after:
            assert st["lastError"] is None, st
            return st
        assert time.monotonic() < deadline, f"the write-behind did not catch up: {st}"
        time.sleep(0.1)


def _records(root):
    return {(x["experiment"], x["path"], x["filename"], x["version"]):
            (x["checksum"], x["sizeBytes"], bool(x["deletedAt"]), x["description"], x["tags"],
             x["metadata"]) for x in listing(root)}


def _s3_server(make_server, workdir, monkeypatch, url):
    from conftest import client_config

    root = workdir / "store"
    token = make_token(root, "tester")
    s = make_server(root=root, token=token, args=["--remote", url, "--push-interval", "0.5"])
    client_config(workdir / "client-config", token, monkeypatch)
    src = workdir / "src"
    src.mkdir()
    (src / "a.txt").write_text("write-behind\n" * 100)
    (src / "b.bin").write_bytes(data_bytes("s3", 3 * MiB))
    (src / "c.txt").write_text("to be deleted\n")
    return s, src


def test_write_behind_to_s3(make_server, workdir, monkeypatch, record):
    from ml_dash import Experiment

    url = _s3_url()
    s, src = _s3_server(make_server, workdir, monkeypatch, url)
    t = time.monotonic()
    exp = Experiment(prefix="ns/proj/f1/run", dash_url=s.url, dash_root=None)
    with exp.run as e:
        e.files("docs").upload(str(src / "a.txt"), tags=["doc"], metadata={"k": 1})
        e.files("bin").upload(str(src / "b.bin"), description="weights")
        e.files("docs").upload(str(src / "a.txt"), to="a2.txt")
        e.flush()
    st = _pushed(s)
    record("write-behind: client close to pushed (s)", round(time.monotonic() - t, 2))
    assert st["lastReport"], st

    new = workdir / "pulled"
    cli(new, "pull", url, "--json")
    mine, theirs = _records(s.root), _records(new)
    assert len(mine) == 3 and theirs == mine
    assert cli(new, "verify").returncode == 0
    # The pulled store serves the same files.
    s2 = make_server(root=new, token=s.token)
    with s2.http() as h:
        r = h.get("/api/search/files", params={"pattern": "**/b.bin"})
        (f,) = r.json()["files"]
        d = h.get(f"/api/nodes/{f['id']}/download")
        assert sha256_bytes(d.content) == sha256_bytes((src / "b.bin").read_bytes())


def test_write_behind_pushes_deletes_and_updates(make_server, workdir, monkeypatch):
    from ml_dash import Experiment

    url = _s3_url()
    s, src = _s3_server(make_server, workdir, monkeypatch, url)
    prefix = "ns/proj/run"
    with Experiment(prefix=prefix, dash_url=s.url, dash_root=None).run as e:
        e.files("docs").upload(str(src / "a.txt"))
        e.files("docs").upload(str(src / "c.txt"))
        e.flush()
        eid = e.id
    first = _pushed(s)["pushes"]
    # Now a delete and an update, after everything was pushed.
    with Experiment(prefix=prefix, dash_url=s.url, dash_root=None).run as e:
        e.files("docs/c.txt").delete()
    with s.http() as h:
        (a,) = [f for f in list_files_gql(h, eid) if f["name"] == "a.txt"]
        r = h.patch(f"/api/nodes/{a['id']}", json={"description": "updated", "tags": ["x"]})
        assert r.status_code == 200, r.text
    assert {(x["filename"], bool(x["deletedAt"]), x["description"]) for x in listing(s.root)} == {
        ("a.txt", False, "updated"), ("c.txt", True, None)}
    # (Until api.rs told the write-behind of deletes and updates, /health said nothing was
    # pending here and they never reached the remote.)
    _pushed(s, after=first)
    new = workdir / "pulled"
    cli(new, "pull", url, "--json")
    assert _records(new) == _records(s.root)


def test_ids_of_files_written_by_another_process_resolve(server, workdir):
    """A file the CLI uploads while the server runs is listed by the server, and the id it
    lists answers at once (before api.rs and graphql registered what they list, the id was
    404 for up to half a second after the server's previous catalog refresh)."""
    src = workdir / "f.txt"
    with server.http() as h:
        exp = open_experiment(h, "ns", "proj", "run")
        for i in range(3):
            assert_api_error(h.get(f"/api/nodes/{UNKNOWN_ID}"), 404)  # a refresh, just now
            src.write_text(f"written by the CLI {i}\n")
            cli(server.root, "upload", src, "--namespace", "ns", "--project", "proj",
                "--experiment", "run", "--prefix", f"/cli{i}")
            r = h.get("/api/search/files", params={"pattern": "**/f.txt",
                                                   "experimentId": exp["id"]})
            fid = r.json()["files"][0]["id"]
            assert h.get(f"/api/nodes/{fid}").status_code == 200
            assert h.get(f"/api/nodes/{fid}/download").text == f"written by the CLI {i}\n"
            assert_api_error(h.get(f"/api/nodes/{UNKNOWN_ID}"), 404)
            src.write_text(f"again {i}\n")
            cli(server.root, "upload", src, "--namespace", "ns", "--project", "proj",
                "--experiment", "run", "--prefix", f"/gql{i}")
            (f,) = [x for x in list_files_gql(h, exp["id"]) if x["pPath"] == f"/gql{i}/f.txt"]
            assert h.get(f"/api/nodes/{f['id']}/download").text == f"again {i}\n"
