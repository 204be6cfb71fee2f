"""Atomic file writes (a reader never sees a half-written file) and the one-writer lock."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write (e.g. by torch.save or onnx.save); rename on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; it replaces `path` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def writer_lock(path: str | Path, busy: Callable[[str], Exception]) -> Iterator[None]:
    """Hold the one-writer lock of `path` (a table or a run directory) for the block.

    An advisory flock on the sibling file ``<path>.lock`` that records the holder's pid and command.
    A second writer gets ``busy(holder)`` raised at once (it never waits). The kernel drops the lock when the holder
    dies, so a killed writer never blocks the next one. Readers do not take it. The lock file is
    removed on release, and so are the parent folders this call had to create (a failed start leaves
    the output path as it was).
    """
    path = Path(path)
    lock_path = path.with_name(path.name + ".lock")
    created = [p for p in reversed(path.parents) if not p.exists()]
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock_path, busy)
    try:
        os.ftruncate(fd, 0)
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"pid {os.getpid()} since {since}: {' '.join(sys.argv) or 'python'}".encode())
        yield
    finally:
        lock_path.unlink(missing_ok=True)  # while still held: a waiting writer re-checks the inode
        os.close(fd)
        for parent in reversed(created):
            if not path.exists():
                with contextlib.suppress(OSError):
                    parent.rmdir()  # only if empty


def _acquire(lock_path: Path, busy: Callable[[str], Exception]) -> int:
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 512).decode(errors="replace").strip() or "a process that is starting"
            os.close(fd)
            raise busy(holder[:200]) from None
        # The holder may have released and unlinked the file between our open and flock: then
        # we locked a file nobody else will see, so try again on the current one.
        try:
            if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


class StoredRecord(BaseModel):
    """Base of a JSON file smnas writes and reads back (a deploy manifest, a predictor's metadata): strict types
    (no true for a number, no text for a count) and finite numbers in every field smnas reads.

    Other keys are kept as written (extra="allow"): the files also hold figures nobody reads back, and a key a
    newer smnas adds survives a re-save. NaN figures among those are written as NaN, as json.dumps does."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False, ser_json_inf_nan="constants")
