"""Atomic file writes for run outputs (no torch import): a reader never sees a half-written
metrics.csv, summary, fit or plot, and an interrupted write leaves the old file intact."""
from __future__ import annotations

import os
import tempfile
from typing import Callable


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def atomic_write(path: str, write: Callable[[str], None], suffix: str = ".tmp") -> str:
    """Calls write(tmp) on a temporary file next to `path`, gives it the usual file mode
    (mkstemp creates 0600) and renames it over `path`; the temporary file goes on error."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix, dir=d)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_write_bytes(path: str, data: bytes) -> None:
    """`data` into `path`, flushed to disk before the rename."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, write)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
