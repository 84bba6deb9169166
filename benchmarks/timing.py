"""Wall-clock timing shared by the benchmark scripts (run them from the repository root)."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

# CPU features that decide which precision is fastest: with AMX, bf16 matrix products run on
# tiles too, and INT8 weights (decompressed to bf16 at run time) can be slower than bf16 ones.
MATMUL_FEATURES = ("avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")


def cpu_description() -> str:
    """The CPU's model name and which of ``MATMUL_FEATURES`` it has (Linux ``/proc/cpuinfo``)."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in info.read_text().splitlines():
        key, separator, value = line.partition(":")
        if separator:
            fields.setdefault(key.strip(), value.strip())  # the first core's (all cores are alike)
    flags = set(fields.get("flags", "").split())
    features = [feature for feature in MATMUL_FEATURES if feature in flags]
    listed = ", ".join(features) if features else "none of " + "/".join(MATMUL_FEATURES)
    return f"{fields.get('model name', platform.machine())} ({listed})"


def median_seconds(function: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``function`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class StageClock:
    """Wall time per stage of a call, accumulated by the callables it wraps.

    A wrapped callable called inside another wrapped one counts to the outer one's stage only
    (a decoding step's decoder pass is decoding, not prefill).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}  # of the last call
        self._inside = False

    def wrap(self, stage: str | Callable[..., str], function: Callable) -> Callable:
        """``function`` timed into ``stage``, or into ``stage(*args, **kwargs)`` when it is a callable."""

        def timed(*args: object, **kwargs: object) -> object:
            if self._inside:
                return function(*args, **kwargs)
            name = stage if isinstance(stage, str) else stage(*args, **kwargs)
            self._inside, start = True, time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self._inside = False
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
                self.calls[name] = self.calls.get(name, 0) + 1

        return timed

    def median_stages(self, function: Callable[[], object], repeats: int, warmup: int = 1) -> dict[str, float]:
        """Median seconds per stage, outside the stages (``"other"``) and of the whole call (``"total"``).

        Medians over ``repeats`` calls after ``warmup`` calls; a stage a call did not enter counts
        0 seconds in it.
        """
        for _ in range(warmup):
            function()
        records = []
        for _ in range(repeats):
            self.seconds, self.calls = {}, {}
            start = time.perf_counter()
            function()
            total = time.perf_counter() - start
            records.append({**self.seconds, "other": total - sum(self.seconds.values()), "total": total})
        names = dict.fromkeys(name for record in records for name in record)  # every call's stages, in order
        return {name: statistics.median(record.get(name, 0.0) for record in records) for name in names}
