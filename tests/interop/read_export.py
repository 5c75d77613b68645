"""Open an experiment exported by `ml-dash export --layout ml-dash` with the real ml-dash
client (local mode), list its files, download each one (the client checks the checksum of
what it copied), and print one JSON object for the Rust test to check.

usage: read_export.py DASH_ROOT PREFIX DOWNLOAD_DIR
"""

import hashlib
import json
import os
import sys

os.environ.setdefault("ML_DASH_NO_VERSION_CHECK", "1")
os.environ.setdefault("ML_DASH_BUFFER_ENABLED", "false")

import ml_dash  # noqa: E402
from ml_dash import Experiment  # noqa: E402


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main():
    dash_root, prefix, dest = sys.argv[1:4]
    out = {"version": ml_dash.__version__, "files": [], "params": None, "metrics": {}}
    with Experiment(prefix=prefix, dash_root=dash_root).run as exp:
        listed = exp.files().list()
        for i, f in enumerate(listed):
            target = os.path.join(dest, f"{i}-{f['filename']}")
            # Download by id: the client copies the bytes and verifies them against the
            # record's checksum (it deletes the copy and raises if they differ).
            got = exp.files(file_id=f["id"]).download(to=target)
            out["files"].append(
                {
                    "id": f["id"],
                    "path": f["path"],
                    "filename": f["filename"],
                    "sizeBytes": f["sizeBytes"],
                    "checksum": f["checksum"],
                    "downloadedSha256": sha256(got),
                    "downloadedSize": os.path.getsize(got),
                }
            )
        out["params"] = exp.params.get()
        metrics_dir = os.path.join(dash_root, prefix, "metrics")
        if os.path.isdir(metrics_dir):
            for name in sorted(os.listdir(metrics_dir)):
                r = exp.metrics(name).read(start_index=0, limit=10000)
                out["metrics"][name] = [p["data"] for p in r["data"]]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
