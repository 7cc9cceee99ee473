"""Files kept beside the lake's tables (the outcome models' artefacts): on a local lake plain files, on an
`s3://` lake objects in the same store, so that every process and machine serving the lake finds them.

Only what the whole deployment must share goes here; what one process makes for one user (a report, a figure)
is written to a local folder instead (docs/SCALE-OUT.md).

>>> import tempfile
>>> from pathlib import Path
>>> lake, scratch = tempfile.mkdtemp(), Path(tempfile.mkdtemp())
>>> (scratch / "m1.pt").write_bytes(b"weights")
7
>>> uri = put_file(scratch / "m1.pt", lake, "model_artefacts/m1/m1.pt")
>>> fetch_file(uri, scratch / "cache").read_bytes()
b'weights'
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs

from sinks import delta


def put_file(local: Path, lake: str | Path, key: str) -> str:
    """Copy `local` to `key` under the lake; returns the copy's URI (a local path on a local lake)."""
    uri = delta.table_uri(lake, key)
    fs, path = delta.filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pafs.copy_files(str(local), path, destination_filesystem=fs)
    return uri


def fetch_file(uri: str, cache_dir: Path) -> Path:
    """A local copy of `uri` (`put_file`'s): the file itself if it is local, else downloaded into `cache_dir`
    (once: an artefact never changes under its name)."""
    if not delta.is_remote(uri):
        return Path(uri)
    local = cache_dir / uri.split("://", 1)[1]
    if not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        fs, path = delta.filesystem(uri)
        partial = local.with_name(local.name + ".partial")
        pafs.copy_files(path, str(partial), source_filesystem=fs)
        partial.replace(local)  # whole or absent: a reader never loads half a download
    return local
