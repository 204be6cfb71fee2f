"""The one-writer lock: a second writer is refused at once with the holder named; release cleans up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smnas_trt.fileio import writer_lock


class Busy(Exception):
    pass


def test_a_second_writer_is_refused_naming_the_holder_and_release_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new" / "deeper" / "lut.db"
    with writer_lock(target, Busy):
        lock = target.with_name("lut.db.lock")
        assert lock.read_text().startswith(f"pid {os.getpid()} since ")
        with pytest.raises(Busy, match=rf"^pid {os.getpid()} since .*: "), writer_lock(target, Busy):
            pass  # pragma: no cover - never entered
    # Nothing was written at the target: the lock file and the folders made for it are gone.
    assert not (tmp_path / "new").exists()
    with writer_lock(target, Busy):  # free again
        target.write_text("x")
    assert target.read_text() == "x" and sorted(p.name for p in target.parent.iterdir()) == ["lut.db"]
