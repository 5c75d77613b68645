import io
from os import PathLike
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union, final

__all__ = [
    "Experiment",
    "Metric",
    "Parameters",
    "Reader",
    "Record",
    "RemoteError",
    "StoreError",
    "__version__",
]

__version__: str

Record = Dict[str, Any]
"""A file record: id, namespace, project, experiment, path, filename, version, sizeBytes,
checksum, contentType, description, tags, metadata, uploadedAt, updatedAt, deletedAt, newBytes."""

class StoreError(Exception): ...
class RemoteError(StoreError): ...

@final
class Parameters:
    def set(self, **values: Any) -> Dict[str, Any]: ...
    def get(self) -> Dict[str, Any]: ...

@final
class Metric:
    @property
    def name(self) -> str: ...
    def append(self, **fields: Any) -> Dict[str, Any]: ...
    def points(self) -> List[Dict[str, Any]]: ...

@final
class Reader:
    @property
    def record(self) -> Record: ...
    def size(self) -> int: ...
    def read(self, n: Optional[int] = None) -> bytes: ...
    def seek(self, offset: int, whence: int = 0) -> int: ...
    def tell(self) -> int: ...
    def close(self) -> None: ...

@final
class Upload:
    """A background upload: ``experiment.file(..., background=True)``."""

    def wait(self, timeout: Optional[float] = None) -> Record: ...
    def done(self) -> bool: ...
    @property
    def record(self) -> Optional[Record]: ...

class _StoredFile(io.BufferedReader):
    """What `Experiment.open_file` returns: a BufferedReader with the version's record."""

    record: Record

class Experiment:
    def __new__(
        cls,
        name: str,
        project: str,
        local_path: Union[str, "PathLike[str]", None] = None,  # None: ".ml-dash"
        namespace: str = "local",
        remote: Optional[str] = None,  # s3://BUCKET/PREFIX (push on close) or http(s):// (a server)
        endpoint: Optional[str] = None,
        token: Optional[str] = None,  # for an http(s):// server
        keep_last: Optional[int] = None,  # retention: newest N versions of each file
        keep_tags: Optional[List[str]] = None,  # retention: also every version with one of these
    ) -> "Experiment": ...
    def gc(self, dry_run: bool = False) -> Dict[str, Any]: ...
    @property
    def name(self) -> str: ...
    @property
    def project(self) -> str: ...
    @property
    def namespace(self) -> str: ...
    @property
    def local_path(self) -> Path: ...
    def open(self) -> "Experiment": ...
    def close(self) -> Optional[Dict[str, Any]]: ...
    def __enter__(self) -> "Experiment": ...
    def __exit__(self, exc_type: Any = None, exc: Any = None, tb: Any = None) -> bool: ...
    def file(
        self,
        path: Union[str, "PathLike[str]"],
        prefix: str = "/",
        description: Optional[str] = None,
        tags: Optional[Sequence[str]] = None,
        metadata: Optional[Dict[str, Any]] = None,
        name: Optional[str] = None,
        background: bool = False,  # True: returns an Upload handle instead of the record
    ) -> Record: ...
    def wait_background(self) -> None: ...
    def files(
        self,
        prefix: str = "/",
        glob: Optional[str] = None,
        tags: Optional[Sequence[str]] = None,
        all_versions: bool = False,
        include_deleted: bool = False,
    ) -> List[Record]: ...
    def get(self, path: str, version: Optional[int] = None) -> Record: ...
    def download(
        self, path: str, dest: Union[str, "PathLike[str]"], version: Optional[int] = None
    ) -> Record: ...
    def read_bytes(self, path: str, version: Optional[int] = None) -> bytes: ...
    def open_file(
        self,
        path: str,
        version: Optional[int] = None,
        buffer_size: int = ...,
        remote: Optional[str] = None,  # s3://BUCKET/PREFIX: read lazily from the remote
        endpoint: Optional[str] = None,
    ) -> _StoredFile: ...
    def delete(self, path: str) -> List[Record]: ...
    def update(
        self,
        path: str,
        description: Optional[str] = None,
        tags: Optional[Sequence[str]] = None,
        metadata: Optional[Dict[str, Any]] = None,
    ) -> Record: ...
    def parameters(self) -> Parameters: ...
    def log(
        self, message: str, level: str = "info", metadata: Optional[Dict[str, Any]] = None
    ) -> Dict[str, Any]: ...
    def logs(self) -> List[Dict[str, Any]]: ...
    def metric(self, name: str) -> Metric: ...
    def push(self, url: Optional[str] = None, endpoint: Optional[str] = None) -> Dict[str, Any]: ...
