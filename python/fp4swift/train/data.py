"""Byte-level corpus, a deterministic train/validation split by file, and a batch sampler
that is a pure function of (seed, step), so every recipe sees the same data in the same
order and a resumed run continues exactly where it stopped.

Default corpus: the Python standard library's own .py files (sysconfig's 'stdlib' path,
site-packages excluded), so nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import sysconfig
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

#: Fraction of files held out for validation (chosen by a stable hash of the relative path).
VAL_PERMILLE = 50
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", ".git", ".hg", ".svn", "node_modules"}
#: Files larger than this are memory-mapped instead of read (no size limit), and only their
#: first _TEXT_SAMPLE bytes are checked for text.
_MMAP_BYTES = 64 << 20
_TEXT_SAMPLE = 4 << 20


class DataError(ValueError):
    """Bad corpus input (missing path, no text, too little data): a one-line message for the user."""


@dataclass
class Corpus:
    """Byte tokens of the training and validation splits (uint8 arrays) and where they came from."""

    train: np.ndarray
    val: np.ndarray
    source: str
    files: int
    val_files: int
    split: str  # "by file" or "by position"
    skipped: Dict[str, int] = field(default_factory=dict)  # reason -> files (or directories) left out
    _fingerprint: Optional[Dict[str, Any]] = field(default=None, repr=False)

    def describe(self) -> str:
        return (f"{self.source}: {self.files} files, {self.train.size:,} train bytes, {self.val.size:,} validation bytes "
                f"(split {self.split}, {self.val_files} validation files)")

    def skipped_note(self) -> Optional[str]:
        """'skipped 3 files under SOURCE: 2 binary, 1 unreadable (Permission denied)', or None."""
        if not self.skipped:
            return None
        n = sum(self.skipped.values())
        return (f"skipped {n} file{'s' if n != 1 else ''} under {self.source}: "
                + ", ".join(f"{k} {reason}" for reason, k in sorted(self.skipped.items(), key=lambda kv: -kv[1])))

    def fingerprint(self) -> Dict[str, Any]:
        """Sizes and a SHA-256 of the two splits: what config.json records, so that a resumed run
        notices changed data (its validation split and batches would differ)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for part in (self.train, self.val):
                h.update(len(part).to_bytes(8, "little"))
                h.update(memoryview(np.ascontiguousarray(part)))
            self._fingerprint = {"files": self.files, "train_bytes": int(self.train.size),
                                 "val_bytes": int(self.val.size), "sha256": h.hexdigest()}
        return self._fingerprint


def stdlib_path() -> str:
    return sysconfig.get_paths()["stdlib"]


def _is_val(relpath: str) -> bool:
    """Stable across runs and machines: CRC-32 of the '/'-separated relative path."""
    return zlib.crc32(relpath.replace(os.sep, "/").encode("utf-8", "surrogateescape")) % 1000 < VAL_PERMILLE


def _list_files(root: str, suffixes: Optional[Tuple[str, ...]], unreadable: List[OSError]) -> List[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable.append):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            if suffixes is not None and not f.endswith(suffixes):
                continue
            out.append(os.path.join(dirpath, f))
    return out


def _looks_like_text(data: Any) -> bool:
    """No NUL byte and mostly valid UTF-8 (a few stray latin-1 bytes are tolerated)."""
    if data.find(b"\x00") >= 0:
        return False
    head = bytes(data[:_TEXT_SAMPLE]) if len(data) > _MMAP_BYTES else data  # read files: all of it
    try:
        (head if isinstance(head, bytes) else bytes(head)).decode("utf-8")
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data" and len(data) > _MMAP_BYTES:
            return True  # the sample cut a character in two
        bad = bytes(head[e.start:]).decode("utf-8", errors="replace").count("\ufffd")
        if bad > max(8, len(head) // 100):
            return False
    return True


def _read_text(path: str) -> Tuple[Optional[Any], Optional[str]]:
    """(the file's bytes, None) if it looks like text, else (None, why not): "empty", "binary",
    "unreadable (reason)". Files above _MMAP_BYTES are memory-mapped, not read."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                return None, "empty"
            data: Any = fh.read() if size <= _MMAP_BYTES else mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        return None, f"unreadable ({e.strerror or e})"
    if not _looks_like_text(data):
        return None, "binary"
    return data, None


def load_corpus(path: Optional[str] = None) -> Corpus:
    """Reads the corpus: a text file, or every text file under a directory (recursively);
    None = the standard library's .py files. Raises DataError on a missing path or no text,
    naming why (unreadable, binary, empty); files left out of a directory are counted in
    Corpus.skipped. Large files are memory-mapped (a single --data file is not copied)."""
    if path is None:
        root, suffixes, source = stdlib_path(), (".py",), "Python stdlib .py files"
        if not os.path.isdir(root):
            raise DataError(f"the Python standard library directory {root} does not exist; pass --data PATH")
    else:
        root, suffixes, source = path, None, path
        if not os.path.exists(path):
            raise DataError(f"--data {path}: no such file or directory")
    if os.path.isfile(root):
        data, why = _read_text(root)
        if data is None:
            raise DataError(f"--data {root}: " + {"empty": "the file is empty",
                                                  "binary": "not a text file (NUL bytes or mostly invalid UTF-8)"}.get(
                why or "", f"cannot read the file: {(why or '')[len('unreadable ('):-1]}"))
        tokens = np.frombuffer(data, dtype=np.uint8)
        cut = tokens.size - max(1, tokens.size * VAL_PERMILLE // 1000)
        return Corpus(tokens[:cut], tokens[cut:], source, 1, 0, "by position (last 5% of the bytes)")
    unreadable_dirs: List[OSError] = []
    files, base = _list_files(root, suffixes, unreadable_dirs), root
    if unreadable_dirs and os.path.abspath(getattr(unreadable_dirs[0], "filename", "") or "") == os.path.abspath(root):
        e = unreadable_dirs[0]
        raise DataError(f"--data {root}: cannot read the directory: {e.strerror or e}")
    skipped: Dict[str, int] = {}
    for e in unreadable_dirs:
        reason = f"unreadable directory ({e.strerror or e})"
        skipped[reason] = skipped.get(reason, 0) + 1
    train_parts: List[Any] = []
    val_parts: List[Any] = []
    n_files = empty = 0
    for f in files:
        data, why = _read_text(f)
        if data is None:
            if why == "empty":  # nothing lost: counted only when no file is left
                empty += 1
            else:
                skipped[why or "unreadable"] = skipped.get(why or "unreadable", 0) + 1
            continue
        n_files += 1
        (val_parts if _is_val(os.path.relpath(f, base)) else train_parts).append(data)
    if n_files == 0:
        reasons = dict(skipped, empty=empty) if empty else skipped
        detail = " (" + ", ".join(f"{k} {r}" for r, k in reasons.items()) + ")" if reasons else ""
        raise DataError(f"{source}: no non-empty text files found{detail}" if path is not None else
                        f"no .py files found under {root}; pass --data PATH")
    split = "by file"
    val_files = len(val_parts)
    if not train_parts or not val_parts:
        # one file (or an unlucky hash): hold out the last 5% of the bytes instead
        everything = b"\n".join(train_parts + val_parts)
        cut = len(everything) - max(1, len(everything) * VAL_PERMILLE // 1000)
        train_b, val_b = everything[:cut], everything[cut:]
        split, val_files = "by position (last 5% of the bytes)", 0
    else:
        train_b, val_b = b"\n".join(train_parts), b"\n".join(val_parts)
    return Corpus(np.frombuffer(train_b, dtype=np.uint8), np.frombuffer(val_b, dtype=np.uint8),
                  source, n_files, val_files, split, skipped)


def check_seq_len(corpus: Corpus, seq_len: int) -> None:
    """Both splits must hold at least one window of seq_len + 1 bytes (inputs plus shifted targets)."""
    need = seq_len + 1
    if corpus.train.size < need or corpus.val.size < need:
        raise DataError(f"--seq-len {seq_len} needs at least {need} bytes in each split, but {corpus.source} has "
                        f"{corpus.train.size} training and {corpus.val.size} validation bytes; "
                        f"use a smaller --seq-len or more data")


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> Tuple[np.ndarray, np.ndarray]:
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    w = tokens[idx].astype(np.int64)
    return w[:, :-1], w[:, 1:]


def train_batch(tokens: np.ndarray, seed: int, step: int, batch_size: int, seq_len: int) -> Tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) [batch, seq_len] int64 for a step: a pure function of (seed, step)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7472, step]))
    starts = rng.integers(0, tokens.size - seq_len, size=batch_size)
    return _windows(tokens, starts, seq_len)


def val_batches(tokens: np.ndarray, n_batches: int, batch_size: int, seq_len: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Fixed validation batches: n_batches·batch_size windows evenly spaced over the split."""
    n = max(1, n_batches * batch_size)
    last = tokens.size - seq_len - 1
    starts = np.linspace(0, last, num=n).round().astype(np.int64) if last > 0 else np.zeros(n, dtype=np.int64)
    out = []
    for i in range(0, n, batch_size):
        out.append(_windows(tokens, starts[i:i + batch_size], seq_len))
    return out
