"""The machine a result was measured or an artifact was built on, in one line."""

from __future__ import annotations

import platform
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
