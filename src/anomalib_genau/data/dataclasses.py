"""anomalib image items and batches that also carry GenAU's dialogue.

Extra fields: ``category`` (product folder), ``defect_type`` (coarse types joined by
``", "``; empty for normal images), ``instruction`` and ``response`` (the training target,
ending with ``[SEG_defect] [SEG_normal]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from anomalib.data import ImageBatch, ImageItem


@dataclass
class GenAUItem(ImageItem):
    """One image with its instruction and response."""

    category: str | None = None
    defect_type: str | None = None
    instruction: str | None = None
    response: str | None = None


@dataclass
class GenAUBatch(ImageBatch):
    """A batch of :class:`GenAUItem`; the text fields are lists of strings."""

    item_class: ClassVar[type[GenAUItem]] = GenAUItem
    category: list[str] | None = None
    defect_type: list[str] | None = None
    instruction: list[str] | None = None
    response: list[str] | None = None
