"""ml-dash: a content-addressed artifact store for machine-learning experiments.

The engine is Rust (chunked, deduplicated, compressed, verified); this module is its Python
face, the API of the ml-dash Files tutorial::

    from ml_dash import Experiment

    with Experiment(name="my-experiment", project="project", local_path=".ml-dash") as exp:
        result = exp.file("model.pth", prefix="/models")
        print(result["filename"], result["sizeBytes"], result["checksum"])

The store is the same one the ``ml-dash`` command line reads.
"""

import io
from typing import Any, Dict

from ._core import Experiment as _CoreExperiment
from ._core import Metric, Parameters, Reader, RemoteError, StoreError, Upload, __version__

__all__ = [
    "Experiment",
    "Metric",
    "Parameters",
    "Reader",
    "Record",
    "RemoteError",
    "StoreError",
    "Upload",
    "__version__",
]

Record = Dict[str, Any]
"""A file record (the type of what `file`, `get`, `files` ... return)."""


class _RawFile(io.RawIOBase):
    """A stored version as a raw, seekable binary stream (every chunk verified on read)."""

    def __init__(self, reader):
        super().__init__()
        self._r = reader
        self.record = reader.record

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, b):
        # Decoded straight into `b` (bytes, not items: array("i") takes 4 per item).
        return self._r.readinto(b)

    def readall(self):
        return self._r.read(-1)

    def seek(self, offset, whence=io.SEEK_SET):
        return self._r.seek(offset, whence)

    def tell(self):
        return self._r.tell()

    def close(self):
        if not self.closed:
            self._r.close()
        super().close()


class Experiment(_CoreExperiment):
    """``Experiment(name, project, local_path=".ml-dash", namespace="local", remote=None,
    keep_last=None, keep_tags=None)``.

    ``keep_last=N`` (and ``keep_tags=["best"]``) store the experiment's retention policy:
    every later ``ml-dash gc`` (or ``gc()``) keeps the newest N versions of each file plus
    those tagged so, and reclaims the rest.

    Use it as a context manager, or call ``open()`` / ``close()``. With ``remote``
    (``"s3://bucket/prefix"``), closing pushes the store there. With ``remote`` an
    ``http://`` or ``https://`` URL of ``ml-dash serve``, the experiment lives on that server
    (no local store; ``token=`` or the ml-dash client's token file authenticates).
    """

    def __new__(
        cls,
        name,
        project,
        local_path=None,
        namespace="local",
        remote=None,
        endpoint=None,
        token=None,
        keep_last=None,
        keep_tags=None,
    ):
        if isinstance(remote, str) and remote.startswith(("http://", "https://")):
            if keep_last is not None or keep_tags:
                raise ValueError("keep_last / keep_tags apply to a local store, not to a server")
            from ._server import ServerExperiment

            return ServerExperiment(name, project, namespace=namespace, remote=remote, token=token)
        return super().__new__(cls, name, project, local_path, namespace, remote, endpoint, keep_last, keep_tags)

    def open_file(self, path, version=None, buffer_size=1 << 20, remote=None, endpoint=None):
        """Open a stored file for reading: a buffered, seekable binary file object, so
        ``torch.load(exp.open_file("/models/model.pth"))`` reads straight from the store.
        Its ``record`` attribute is the version's record. With ``remote="s3://bucket/prefix"``
        the version is read from that remote without pulling: only the chunks read are
        fetched, each verified (and cached in the local store for later reads and pulls)."""
        raw = _RawFile(self._reader(path, version, remote, endpoint))
        f = io.BufferedReader(raw, buffer_size=buffer_size)
        f.record = raw.record
        return f
