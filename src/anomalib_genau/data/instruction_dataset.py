"""GenAU's dataset over anomalib test splits: dialogue items, unreadable files skipped and counted.

``InstructionDataset`` concatenates single-category test splits (``CategoryData``) and turns
each sample into a :class:`~anomalib_genau.data.dataclasses.GenAUItem` with its instruction,
response and multi-type question; ``ReadableBatchLoader`` leaves unreadable files out of their
batches and counts them.
"""

from __future__ import annotations

import logging
import random
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from anomalib import TaskType
from anomalib.data import AnomalibDataModule
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.utils.image import read_mask
from anomalib.data.utils.split import random_split
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms.v2 import InterpolationMode, Transform
from torchvision.transforms.v2.functional import resize
from torchvision.tv_tensors import Mask

from anomalib_genau import prompts
from anomalib_genau.taxonomy import (
    object_name,
    product_candidates,
    sample_defect_types,
    type_vocabulary,
)

from .dataclasses import GenAUBatch, GenAUItem, type_labels
from .defect_names import DefectNameReader, folder_defect_names
from .images import read_rgb
from .sources import DATASET_SOURCES
from .synthetic_anomalies import SyntheticAnomalies

logger = logging.getLogger(__name__)


class EpochSeededSampler(Sampler[int]):
    """A shuffle that depends only on ``(seed, epoch)``.

    Lightning calls ``set_epoch`` at the start of every epoch, so a run resumed from a
    checkpoint sees the batches an uninterrupted run would (a ``RandomSampler`` draws from the
    global RNG, whose state a checkpoint does not keep).
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


@dataclass
class CategoryData:
    """The samples of one product category, with their coarse defect types resolved.

    Built by :meth:`from_dataset`, which maps every anomalous sample's defect names through the
    taxonomy (so an unknown name fails at setup, not mid-epoch) and leaves out anomalous
    samples without a readable mask file, counting them: GenAU's segmentation target and the
    pixel metrics need the mask. ``candidates`` are the product's coarse types for the
    multi-type instruction: the taxonomy's, or for a product it lacks, the types its samples have.
    """

    dataset: AnomalibDataset
    category: str
    taxonomy_key: str | None
    candidates: list[str] = field(default_factory=list)
    without_mask: int = 0

    @classmethod
    def from_dataset(
        cls, dataset: AnomalibDataset, category: str, taxonomy_key: str | None, defect_names: DefectNameReader
    ) -> CategoryData:
        """Resolve the defect types of ``dataset``'s samples and drop anomalous ones without a mask."""
        samples = dataset.samples
        types = [
            ", ".join(sample_defect_types(taxonomy_key, category, defect_names(str(path), int(label))))
            for path, label in zip(samples.image_path, samples.label_index, strict=True)
        ]
        masks = samples.mask_path.fillna("").astype(str) if "mask_path" in samples else [""] * len(samples)
        keep = [
            index
            for index, (label, mask) in enumerate(zip(samples.label_index, masks, strict=True))
            if int(label) == 0 or (mask and Path(mask).is_file())
        ]
        if len(keep) < len(samples):
            logger.warning(
                "%s: %d anomalous image(s) without a mask file left out.", category, len(samples) - len(keep)
            )
        dataset = dataset.subsample(keep)
        dataset.samples["defect_type"] = [types[index] for index in keep]
        candidates = product_candidates(taxonomy_key, category)
        if candidates is None:
            candidates = sorted({t for joined in types for t in joined.split(", ") if t})
        return cls(dataset, category, taxonomy_key, candidates, without_mask=len(samples) - len(keep))

    def split(self, ratio: float, seed: int) -> tuple[CategoryData, CategoryData]:
        """Label-stratified split into ``(1 - ratio, ratio)`` parts."""
        first, second = random_split(self.dataset, ratio, label_aware=True, seed=seed)
        return (
            CategoryData(first, self.category, self.taxonomy_key, self.candidates, self.without_mask),
            CategoryData(second, self.category, self.taxonomy_key, self.candidates),
        )


@dataclass(frozen=True)
class UnreadableSample:
    """An image or mask that could not be read; the collate function leaves it out."""

    path: str
    category: str
    reason: str


class InstructionDataset(Dataset):
    """The samples of one or more categories, each item with GenAU's instructions and responses.

    Samples are read lazily, one file per item. Images are read by :func:`read_rgb` (any bit
    depth or mode); an unreadable image or mask becomes an :class:`UnreadableSample`, which
    :class:`ReadableBatchLoader` leaves out and counts.

    Every item carries the binary ``instruction`` and ``response`` it trains on, the
    multi-type ``type_instruction`` with its ``type_candidates``, and ``gt_types``, the
    multi-hot label over :func:`~anomalib_genau.taxonomy.type_vocabulary`. Samples with
    ``question`` and ``answer`` columns (an instruction file) train on those instead.

    Args:
        parts: The categories, in order; items of a category are contiguous.
        paraphrase_seed: Seed of per-sample paraphrased instructions and of the instruction mix;
            ``None`` uses the canonical binary instruction (evaluation).
        multi_type_ratio: Fraction of training items whose instruction is the multi-type one
            (only with ``paraphrase_seed``).
        synthetic_ratio: Fraction of normal training items turned into synthetic anomalies
            (anomalib's Perlin generator), asked the binary question and answered "Yes, anomaly."
            (only with ``paraphrase_seed``; AnomalyGPT mixes simulated anomalies with real ones).

    Raises:
        ValueError: ``multi_type_ratio`` is positive and a category has no candidate type, or
            ``synthetic_ratio`` is outside ``[0, 1]``.

    """

    def __init__(
        self,
        parts: Sequence[CategoryData],
        paraphrase_seed: int | None = None,
        multi_type_ratio: float = 0.0,
        synthetic_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= synthetic_ratio <= 1.0:
            msg = f"synthetic_ratio must be in [0, 1], got {synthetic_ratio}."
            raise ValueError(msg)
        self.synthetic_ratio = synthetic_ratio
        self.synthetic_anomalies = SyntheticAnomalies(probability=1.0)
        self.parts = list(parts)
        self.paraphrase_seed = paraphrase_seed
        self.multi_type_ratio = multi_type_ratio
        self.ends = list(accumulate(len(part.dataset) for part in self.parts))
        if multi_type_ratio > 0:
            for part in self.parts:
                if not part.candidates and "question" not in part.dataset.samples:
                    msg = (
                        f"Category '{part.category}' has no candidate defect type for the multi-type "
                        "instruction (no taxonomy entry and no anomalous sample); set multi_type_ratio=0."
                    )
                    raise ValueError(msg)
        vocabulary = type_vocabulary()
        unknown = {t for part in self.parts for t in part.candidates if t not in vocabulary}
        if unknown:
            logger.warning("Types outside the taxonomy are not scored by the type metric: %s", sorted(unknown))

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    @property
    def task(self) -> TaskType:
        """Segmentation: every kept sample has a mask."""
        return TaskType.SEGMENTATION

    @property
    def samples(self) -> pd.DataFrame:
        """All samples, with ``category`` and ``defect_type`` columns."""
        frames = [part.dataset.samples.assign(category=part.category) for part in self.parts]
        return pd.concat(frames, ignore_index=True)

    @property
    def without_mask(self) -> dict[str, int]:
        """Anomalous samples left out for lack of a mask, per category."""
        return {part.category: part.without_mask for part in self.parts}

    @property
    def augmentations(self) -> Transform | None:
        """The augmentations anomalib's datamodule sets (the same on every category)."""
        return self.parts[0].dataset.augmentations if self.parts else None

    @augmentations.setter
    def augmentations(self, value: Transform | None) -> None:
        for part in self.parts:
            part.dataset.augmentations = value

    def __getitem__(self, index: int) -> GenAUItem | UnreadableSample:
        part_index = bisect_right(self.ends, index)
        part = self.parts[part_index]
        sample = part.dataset.samples.iloc[index - (self.ends[part_index - 1] if part_index else 0)]
        label = int(sample.label_index)
        try:
            image = read_rgb(sample.image_path)
            mask = (
                Mask(torch.zeros(image.shape[-2:], dtype=torch.uint8))
                if label == 0
                else read_mask(sample.mask_path, as_tensor=True)
            )
        except OSError as error:
            logger.warning("Skipping unreadable sample %s: %s", sample.image_path, error)
            return UnreadableSample(str(sample.image_path), part.category, str(error))
        if mask.shape[-2:] != image.shape[-2:]:
            logger.warning(
                "Mask %s is %s, its image %s: the mask is resized to the image.",
                sample.mask_path,
                tuple(mask.shape[-2:]),
                tuple(image.shape[-2:]),
            )
            mask = Mask(resize(mask[None], list(image.shape[-2:]), InterpolationMode.NEAREST)[0])
        if part.dataset.augmentations is not None:
            image, mask = part.dataset.augmentations(image, mask)
        types = sample.defect_type.split(", ") if sample.defect_type else []
        name = object_name(part.category)
        rng = None if self.paraphrase_seed is None else random.Random(self.paraphrase_seed * 1_000_003 + index)
        type_instruction = prompts.type_instruction(name, part.candidates) if part.candidates else ""
        instruction, response = prompts.instruction(name, rng), prompts.response(name, types)
        if isinstance(sample.get("question"), str):
            instruction, response = sample.question, prompts.with_segmentation_tokens(sample.answer)
        elif rng is not None and rng.random() < self.multi_type_ratio:
            instruction, response = type_instruction, prompts.with_segmentation_tokens(prompts.type_answer(types))
        if label == 0 and rng is not None and rng.random() < self.synthetic_ratio:
            image, anomaly = self.synthetic_anomalies(image)
            mask, label, types = Mask(anomaly.to(torch.uint8)), 1, []
            instruction = prompts.instruction(name, rng)
            response = self.synthetic_anomalies.responses(name, anomaly[None])[0]
        return GenAUItem(
            image=image,
            gt_label=torch.tensor(label),
            gt_mask=mask,
            image_path=str(sample.image_path),
            mask_path=str(sample.mask_path) if label else "",
            category=part.category,
            defect_type=sample.defect_type,
            instruction=instruction,
            response=response,
            type_instruction=type_instruction,
            type_candidates=list(part.candidates or []),
            gt_types=type_labels(types),
        )


def collate_readable(items: list[GenAUItem | UnreadableSample]) -> tuple[GenAUBatch | None, list[UnreadableSample]]:
    """Collate the readable items; return the unreadable ones beside the batch (``None`` if all are)."""
    readable = [item for item in items if isinstance(item, GenAUItem)]
    unreadable = [item for item in items if isinstance(item, UnreadableSample)]
    return (GenAUBatch.collate(readable) if readable else None), unreadable


class ReadableBatchLoader(DataLoader):
    """A DataLoader over an :class:`InstructionDataset` that skips unreadable files and counts them.

    A corrupt file must not end a run mid-epoch: it is logged, left out of its batch (a batch of
    nothing but unreadable files is skipped), and recorded in :attr:`unreadable`, which the
    cross-dataset report counts per category.
    """

    def __init__(self, dataset: InstructionDataset, **kwargs: Any) -> None:
        kwargs.setdefault("collate_fn", collate_readable)
        super().__init__(dataset, **kwargs)
        self.unreadable: list[UnreadableSample] = []

    def __iter__(self) -> Iterator[GenAUBatch]:
        for batch, unreadable in super().__iter__():
            self.unreadable.extend(unreadable)
            if batch is not None:
                yield batch


def category_data(datamodule: AnomalibDataModule) -> CategoryData:
    """The test split of a set-up single-category anomalib datamodule as :class:`CategoryData`."""
    source = DATASET_SOURCES.get(type(datamodule).__name__)
    reader = source.defect_names(datamodule) if source is not None else folder_defect_names
    taxonomy_key = source.taxonomy_key if source is not None else None
    category = getattr(datamodule, "category", None) or getattr(datamodule, "name", "object")
    return CategoryData.from_dataset(datamodule.test_data, category, taxonomy_key, reader)
