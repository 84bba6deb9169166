"""Wall-clock timing shared by the benchmark scripts (run them from the repository root)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


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
