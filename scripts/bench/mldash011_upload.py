#!/usr/bin/env python3
"""Upload checkpoint files, in order, with the real ml-dash 0.11 Python SDK in local mode.

    mldash011_upload.py DASH_ROOT FILE...

API as read from the installed 0.11.0 source (ml_dash/experiment.py, files.py, storage.py):
`Experiment(prefix="owner/project/name", dash_root=DIR)`, `.run` is the context manager that
opens and closes the experiment, `exp.files("checkpoints").upload(path)` stores one file
(local mode: shutil.copy2 into DASH_ROOT/owner/project/name/files/checkpoints/<id>/<filename>
plus a JSON metadata list). File uploads are buffered by default (ML_DASH_BUFFER_ENABLED) and
written by a worker pool when the run closes; the timing includes that close.
"""
import os
import sys

os.environ.setdefault("ML_DASH_NO_VERSION_CHECK", "1")  # no request to pypi.org on import

from ml_dash import Experiment  # noqa: E402


def main() -> None:
    dash_root, files = sys.argv[1], sys.argv[2:]
    with Experiment(prefix="bench/p/e", dash_root=dash_root).run as exp:
        for path in files:
            exp.files("checkpoints").upload(path)


if __name__ == "__main__":
    main()
