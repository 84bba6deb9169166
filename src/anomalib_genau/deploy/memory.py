"""Give back the pages of an export's weight files that OpenVINO no longer reads.

OpenVINO maps an IR's ``.bin`` (and a cached blob) into memory, and the CPU plugin copies the
weights of its matrix products into its own layout at the first inference. From then on the
mapped pages are not read again, but they stay resident: at the 0.5B size about 0.9 GiB of the
process's memory (benchmarks/RESULTS.md, "Where the 3 GiB go"). Neither OpenVINO nor Python offers
to drop them, so this module asks the kernel to (``madvise(MADV_DONTNEED)``, Linux). The mappings
are read-only views of files: a page read again later is read back from the file, so nothing
the runtime holds changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

MADV_DONTNEED = 4  # <sys/mman.h> on Linux
MAPS = Path("/proc/self/maps")


def mapped_ranges(folders: Iterable[Path]) -> list[tuple[int, int]]:
    """``(start, end)`` addresses of this process's read-only mappings of files inside ``folders`` (Linux)."""
    roots = [str(Path(folder).resolve()) + "/" for folder in folders]
    ranges = []
    for line in MAPS.read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or "w" in fields[1] or not fields[5].startswith(tuple(roots)):
            continue
        start, end = (int(address, 16) for address in fields[0].split("-"))
        ranges.append((start, end))
    return ranges


def drop_mapped_pages(folders: Iterable[Path]) -> int:
    """Drop the resident pages of every read-only file mapping inside ``folders``; the bytes of address range.

    Returns 0 where the kernel interface is missing (not Linux).
    """
    if not sys.platform.startswith("linux") or not MAPS.is_file():
        return 0
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    dropped = 0
    for start, end in mapped_ranges(folders):
        if libc.madvise(start, end - start, MADV_DONTNEED) != 0:
            logger.debug("madvise refused %#x-%#x: errno %d", start, end, ctypes.get_errno())
            continue
        dropped += end - start
    return dropped
