"""Byte-level corpus, a deterministic train/validation split by file, and a batch sampler
that is a pure function of (seed, step), so every recipe sees the same data in the same
order and a resumed run continues exactly where it stopped.

Default corpus: the Python standard library's own .py files (sysconfig's 'stdlib' path,
site-packages excluded), so nothing is downloaded.
"""
from __future__ import annotations

import os
import sysconfig
import zlib
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

#: Fraction of files held out for validation (chosen by a stable hash of the relative path).
VAL_PERMILLE = 50
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", ".git", ".hg", ".svn", "node_modules"}
_MAX_FILE_BYTES = 64 << 20


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

    def describe(self) -> str:
        return (f"{self.source}: {self.files} files, {self.train.size:,} train bytes, {self.val.size:,} validation bytes "
                f"(split {self.split}, {self.val_files} validation files)")


def stdlib_path() -> str:
    return sysconfig.get_paths()["stdlib"]


def _is_val(relpath: str) -> bool:
    """Stable across runs and machines: CRC-32 of the '/'-separated relative path."""
    return zlib.crc32(relpath.replace(os.sep, "/").encode("utf-8", "surrogateescape")) % 1000 < VAL_PERMILLE


def _list_files(root: str, suffixes: Optional[Tuple[str, ...]]) -> List[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            if suffixes is not None and not f.endswith(suffixes):
                continue
            out.append(os.path.join(dirpath, f))
    return out


def _read_text(path: str) -> Optional[bytes]:
    """The file's bytes if it looks like text (no NUL byte, mostly valid UTF-8), else None."""
    try:
        if os.path.getsize(path) > _MAX_FILE_BYTES:
            return None
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    if b"\x00" in data:
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        # tolerate a few stray bytes (latin-1 comments), reject binaries
        bad = data[e.start:].decode("utf-8", errors="replace").count("\ufffd")
        if bad > max(8, len(data) // 100):
            return None
    return data


def load_corpus(path: Optional[str] = None) -> Corpus:
    """Reads the corpus: a text file, or every text file under a directory (recursively);
    None = the standard library's .py files. Raises DataError on a missing path or no text."""
    if path is None:
        root, suffixes, source = stdlib_path(), (".py",), "Python stdlib .py files"
        if not os.path.isdir(root):
            raise DataError(f"the Python standard library directory {root} does not exist; pass --data PATH")
    else:
        root, suffixes, source = path, None, path
        if not os.path.exists(path):
            raise DataError(f"--data {path}: no such file or directory")
    if os.path.isfile(root):
        files, base = [root], os.path.dirname(root)
    else:
        files, base = _list_files(root, suffixes), root
    train_parts: List[bytes] = []
    val_parts: List[bytes] = []
    n_files = 0
    for f in files:
        data = _read_text(f)
        if not data:
            continue
        n_files += 1
        (val_parts if _is_val(os.path.relpath(f, base)) else train_parts).append(data)
    if n_files == 0:
        raise DataError(f"{source}: no non-empty text files found" if path is not None else
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
                  source, n_files, val_files, split)


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
