"""The run directory of `fp4swift train` as a resource: checked for writability before any
work, created atomically, locked while a process trains in it, cleaned of the temporary files
an interrupted write left, and write errors turned into one-line messages.

The lock is `DIR/.lock`, held with flock(2) for the life of the training process (the kernel
drops it when the process ends, however it ends); the file holds the owner's pid, host and
start time, which a refused second `train` or `--resume` names.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import os
import re
import socket
import tempfile
from typing import Iterator, List, Optional, Sequence

from .config import RunError

LOCK_NAME = ".lock"

#: The temporary files of files.atomic_write: ".<name>.<8 random characters><suffix>".
_TMP_FILE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.(tmp|png)$")


class WriteError(RunError):
    """A file or directory of the run could not be written: `cannot write PATH: reason`."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot write {path}: {reason}")
        self.path, self.reason = path, reason


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Turns an OSError inside the block into WriteError(path, its reason)."""
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(path, _reason(e)) from None


def check_writable(out: str, subdirs: Sequence[str] = ()) -> None:
    """WriteError unless `out` (and its subdirectories `subdirs`) can be created or written:
    a file where a directory must be, or a directory (the nearest existing one) in which no file
    can be created (permissions, a read-only file system, a full disk). Writes nothing: the
    probe is an unnamed temporary file."""
    for p in [out] + [os.path.join(out, s) for s in subdirs]:
        if os.path.lexists(p) and not os.path.isdir(p):
            raise WriteError(p, "a file is in the way (not a directory)")
    probe = os.path.abspath(out)
    while not os.path.isdir(probe):
        if os.path.lexists(probe):
            raise WriteError(probe, "a file is in the way (not a directory)")
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise WriteError(out if probe == os.path.abspath(out) else probe, _reason(e)) from None


def create_default_dir(root: str = "runs") -> str:
    """root/<YYYYmmdd-HHMMSS>, created atomically (os.mkdir), with -2, -3, ... appended when
    another run took the name, so two runs started in the same second get two directories."""
    with writing(root):
        os.makedirs(root, exist_ok=True)
    base = os.path.join(root, _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    out, i = base, 1
    while True:
        try:
            with writing(out):
                os.mkdir(out)
            return out
        except WriteError as e:
            if not os.path.lexists(out):
                raise e
        i += 1
        out = f"{base}-{i}"


def create_dir(out: str) -> None:
    """`out` and its parents (an existing directory is fine)."""
    with writing(out):
        os.makedirs(out, exist_ok=True)


class RunLock:
    """An exclusive flock on DIR/.lock; `acquire` raises RunError naming the holder."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.path = os.path.join(out, LOCK_NAME)
        self.fd: Optional[int] = None

    def in_use(self, holder: str) -> RunError:
        return RunError(f"{self.out} is in use by another fp4swift train ({holder}); wait for it to finish, "
                        f"or choose another --out")

    def acquire(self) -> "RunLock":
        with writing(self.path):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            try:
                holder = os.read(fd, 4096).decode("utf-8", "replace").strip()
            except OSError:
                holder = ""
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise self.in_use(holder or "unknown process") from None
            raise WriteError(self.path, _reason(e)) from None
        self.fd = fd
        info = (f"pid {os.getpid()} on {socket.gethostname()}, started "
                f"{_dt.datetime.now().isoformat(sep=' ', timespec='seconds')}\n")
        with writing(self.path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode(), 0)
        return self

    def holder(self) -> Optional[str]:
        """Who holds the lock now ("pid N on HOST, started ..."), or None if nobody does.
        Changes nothing (a directory or lock file that does not exist is not locked)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            try:
                return os.read(fd, 4096).decode("utf-8", "replace").strip() or "unknown process"
            except OSError:
                return "unknown process"
        finally:
            os.close(fd)  # closing drops the probe's shared lock
        return None

    def release(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_stale_temporaries(out: str, subdirs: Sequence[str]) -> List[str]:
    """Deletes the temporary files that an interrupted atomic write (a kill during a checkpoint)
    left in DIR and DIR/<recipe>; call it holding the lock. Returns their paths."""
    gone = []
    for d in [out] + [os.path.join(out, s) for s in subdirs]:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for n in names:
            if _TMP_FILE.match(n):
                p = os.path.join(d, n)
                try:
                    os.unlink(p)
                    gone.append(p)
                except OSError:
                    pass
    return gone
