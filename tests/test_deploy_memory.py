"""Dropping the resident pages of mapped weight files: only read-only mappings inside the folders given."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import numpy as np
import pytest

from anomalib_genau.deploy.memory import drop_mapped_pages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps is Linux's")

MIB = 2**20


def resident_bytes(path: Path) -> int:
    """Resident bytes of this process's mappings of ``path`` (``/proc/self/smaps``)."""
    resident, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:  # a mapping's header line
            inside = len(fields) == 6 and fields[5] == str(path.resolve())
        elif inside and fields[0] == "Rss:":
            resident += int(fields[1]) * 1024
    return resident


def mapped(path: Path, access: int) -> mmap.mmap:
    """``path`` mapped whole, every page read once."""
    with path.open("r+b") as file:
        view = mmap.mmap(file.fileno(), 0, access=access)
    assert sum(view[offset] for offset in range(0, len(view), mmap.PAGESIZE)) >= 0
    return view


def test_drops_read_only_mappings_inside_the_folders_and_keeps_their_content(tmp_path: Path) -> None:
    content = np.random.default_rng(0).integers(0, 256, 8 * MIB, dtype=np.uint8).tobytes()
    export, other = tmp_path / "export", tmp_path / "other"
    weights, elsewhere, written = export / "w.bin", other / "w.bin", export / "rw.bin"
    for path in (weights, elsewhere, written):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
    views = [mapped(weights, mmap.ACCESS_READ), mapped(elsewhere, mmap.ACCESS_READ), mapped(written, mmap.ACCESS_WRITE)]
    before = [resident_bytes(path) for path in (weights, elsewhere, written)]
    assert min(before) >= 7 * MIB

    assert drop_mapped_pages([export]) == 8 * MIB

    assert resident_bytes(weights) < MIB  # given back
    assert [resident_bytes(elsewhere), resident_bytes(written)] == before[1:]  # another folder; a writable mapping
    assert views[0][:] == content  # read back from the file
    for view in views:
        view.close()


def test_nothing_mapped_nothing_dropped(tmp_path: Path) -> None:
    assert drop_mapped_pages([tmp_path]) == 0
