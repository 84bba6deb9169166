"""The manifest of a GenAU OpenVINO export (``genau.json``): names and format shared by export and inference.

Imports nothing heavy: the inferencer reads exports without the training stack.
"""

from __future__ import annotations

from collections.abc import Sequence

from anomalib_genau.choices import PRECISIONS, WEIGHT_FORMATS

__all__ = ["FORMAT_VERSION", "MANIFEST", "PRECISIONS", "RT_INFO_KEY", "WEIGHT_FORMATS", "size_name"]

MANIFEST = "genau.json"
# 2: the decoder keeps its KV cache in OpenVINO states; 3: it returns every new position's hidden
# state; 4: token ids come from the saved processor (the dialogue codec), image_features graphs;
# 5: the decoder's context length (max_positions), which bounds a free question
FORMAT_VERSION = 6
# where each graph's rt_info holds the export's configuration id
RT_INFO_KEY = ["genau", "config_id"]


def size_name(size: Sequence[int]) -> str:
    """``"384x384"``: the file-name suffix of an exported ``(H, W)``."""
    return f"{int(size[0])}x{int(size[1])}"
