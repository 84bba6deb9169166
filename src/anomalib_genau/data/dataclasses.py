"""anomalib image items and batches that also carry GenAU's dialogue and defect types.

Extra fields:

- ``category`` (product folder), ``defect_type`` (coarse types joined by ``", "``; empty for
  normal images), ``instruction`` and ``response`` (the training target, ending with
  ``[SEG_defect] [SEG_normal]``);
- ``type_instruction`` and ``type_candidates`` (a list of taxonomy names): the multi-type question;
- ``gt_types`` and ``pred_types``: ``(L,)`` multi-hot labels over
  :func:`~anomalib_genau.taxonomy.type_vocabulary` (``L`` labels, ``normal`` first);
- ``pred_defect_type``: the list of predicted types (``[]`` for normal).

The list fields stay lists of strings in a batch (one list per image): torch's collate would
transpose them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from anomalib.data import ImageBatch, ImageItem

from anomalib_genau.taxonomy import type_vocabulary


def type_labels(types: Sequence[str]) -> torch.Tensor:
    """``(L,)`` int multi-hot over the type vocabulary; ``normal`` when ``types`` is empty.

    Types outside the vocabulary (a product the taxonomy lacks) are not scored.
    """
    vocabulary = type_vocabulary()
    labels = torch.zeros(len(vocabulary), dtype=torch.long)
    for name in types or ["normal"]:
        if name in vocabulary:
            labels[vocabulary.index(name)] = 1
    return labels


@dataclass
class GenAUItem(ImageItem):
    """One image with its instruction and response."""

    category: str | None = None
    defect_type: str | None = None
    instruction: str | None = None
    response: str | None = None
    type_instruction: str | None = None
    type_candidates: list[str] | None = None
    gt_types: torch.Tensor | None = None
    pred_types: torch.Tensor | None = None
    pred_defect_type: list[str] | None = None


@dataclass
class GenAUBatch(ImageBatch):
    """A batch of :class:`GenAUItem`; the text fields are lists of strings."""

    item_class: ClassVar[type[GenAUItem]] = GenAUItem
    category: list[str] | None = None
    defect_type: list[str] | None = None
    instruction: list[str] | None = None
    response: list[str] | None = None
    type_instruction: list[str] | None = None
    type_candidates: list[list[str]] | None = None
    gt_types: torch.Tensor | None = None
    pred_types: torch.Tensor | None = None
    pred_defect_type: list[list[str]] | None = None

    LIST_FIELDS: ClassVar[tuple[str, ...]] = ("type_candidates", "pred_defect_type")

    @classmethod
    def collate(cls, items: list[GenAUItem]) -> GenAUBatch:
        """Collate as anomalib does, with each list field kept as one list per image."""
        lists = {name: [getattr(item, name) for item in items] for name in cls.LIST_FIELDS}
        batch = super().collate([replace(item, **dict.fromkeys(cls.LIST_FIELDS)) for item in items])
        for name, values in lists.items():
            if any(value is not None for value in values):
                setattr(batch, name, values)
        return batch
