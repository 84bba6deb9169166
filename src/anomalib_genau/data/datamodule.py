"""Train GenAU on the *test* split of a source anomalib datamodule, test on a target's.

anomalib's train splits hold normal images only; GenAU learns from masks and defect types,
which only the test splits have (paper 5.2: MVTec-AD's test split is the training set). The
source test split is divided, label-stratified, into training and validation images; the
validation part gives anomalib's PostProcessor its thresholds and never sees target labels.
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
from anomalib.data.utils.split import TestSplitMode, ValSplitMode, random_split
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms.v2 import Transform
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
from .instruction_file import load_instruction_file
from .sources import DATASET_SOURCES, dataset_source, resolve_categories

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

    Raises:
        ValueError: ``multi_type_ratio`` is positive and a category has no candidate type.

    """

    def __init__(
        self, parts: Sequence[CategoryData], paraphrase_seed: int | None = None, multi_type_ratio: float = 0.0
    ) -> None:
        super().__init__()
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
            type_candidates=", ".join(part.candidates),
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


DataModules = AnomalibDataModule | Sequence[AnomalibDataModule]


class GenAUDataModule(AnomalibDataModule):
    """Source test splits for training (and validation), target test splits for testing.

    Args:
        source: anomalib datamodule(s), one category each, whose test splits (masks, defect
            names) train GenAU.
        target: anomalib datamodule(s) whose test splits are evaluated; ``None`` tests on the
            held-out validation part of the source (a smoke-test setting, not cross-dataset).
        val_split_ratio: Fraction of each source category's test split held out for validation.
        multi_type_ratio: Fraction of training items asked the multi-type question instead of
            the binary one (project's choice: 0.25; the paper mixes both without a ratio).
        instruction_file: Optional JSON-lines file of image/question/answer records added to
            the training set (see :mod:`anomalib_genau.data.instruction_file`).
        train_batch_size: Training batch size.
        eval_batch_size: Validation / test batch size.
        num_workers: DataLoader workers.
        augmentations: Transforms applied to every split before the model's pre-processor.
        seed: Seed of the split and of the instruction paraphrases.

    """

    def __init__(
        self,
        source: DataModules,
        target: DataModules | None = None,
        val_split_ratio: float = 0.2,
        multi_type_ratio: float = 0.25,
        instruction_file: str | Path | None = None,
        train_batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        augmentations: Transform | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            augmentations=augmentations,
            seed=seed,
        )
        self.source = source
        self.target = target
        self.val_split_ratio = val_split_ratio
        self.multi_type_ratio = multi_type_ratio
        self.instruction_file = instruction_file

    @staticmethod
    def _as_list(datamodules: DataModules | None) -> list[AnomalibDataModule]:
        if datamodules is None:
            return []
        return [datamodules] if isinstance(datamodules, AnomalibDataModule) else list(datamodules)

    @property
    def sources(self) -> list[AnomalibDataModule]:
        """The source datamodules, one per category."""
        return self._as_list(self.source)

    @property
    def targets(self) -> list[AnomalibDataModule]:
        """The target datamodules, one per category."""
        return self._as_list(self.target)

    @property
    def category(self) -> str:
        """Name of the evaluated data for anomalib's results folders: its category, or ``all``."""
        evaluated = self.targets or self.sources
        return evaluated[0].category if len(evaluated) == 1 else "all"

    @category.setter
    def category(self, category: str) -> None:
        del category  # the categories are the source's and the target's own

    def prepare_data(self) -> None:
        """Let the source and target datamodules check (or fetch) their files."""
        for datamodule in self.sources + self.targets:
            datamodule.prepare_data()

    def _loader(self, dataset: InstructionDataset, batch_size: int, sampler: Sampler | None = None) -> DataLoader:
        return ReadableBatchLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches whose order is a function of ``(seed, epoch)``."""
        sampler = EpochSeededSampler(len(self.train_data), self.seed)
        return self._loader(self.train_data, self.train_batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        """Source validation images, in category order."""
        return self._loader(self.val_data, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        """Target test images, in category order."""
        return self._loader(self.test_data, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        """The test images."""
        return self.test_dataloader()

    def _create_test_split(self) -> None:
        """Keep the target's test split whole: ``_setup`` already defines every split."""

    def _create_val_split(self) -> None:
        """Keep the validation split ``_setup`` carved out of the source test split."""

    @staticmethod
    def _category_data(datamodules: list[AnomalibDataModule]) -> list[CategoryData]:
        """Each datamodule's test split as the dataset ships it.

        GenAU splits off its own validation set, so the wrapped datamodules keep their test
        split whole: normal test images stay in it (``RealIAD`` defaults to dropping them) and
        no validation set is taken out of it.
        """
        parts = []
        for datamodule in datamodules:
            datamodule.test_split_mode = TestSplitMode.FROM_DIR
            datamodule.val_split_mode = ValSplitMode.SAME_AS_TEST
            source = DATASET_SOURCES.get(type(datamodule).__name__)
            if source is not None and source.check_masks is not None:
                source.check_masks(datamodule)
            datamodule.setup()
            parts.append(category_data(datamodule))
        return parts

    def _setup(self, _stage: str | None = None) -> None:
        splits = [part.split(self.val_split_ratio, self.seed) for part in self._category_data(self.sources)]
        train = [part for part, _ in splits]
        if self.instruction_file is not None:
            datasets = load_instruction_file(self.instruction_file)
            train += [CategoryData(dataset, category, None) for category, dataset in datasets.items()]
        self.train_data = InstructionDataset(train, paraphrase_seed=self.seed, multi_type_ratio=self.multi_type_ratio)
        self.val_data = InstructionDataset([val for _, val in splits])
        self.test_data = InstructionDataset(self._category_data(self.targets)) if self.targets else self.val_data


class CrossDataset(GenAUDataModule):
    """The paper's protocol: train on every category of one dataset, test on every category of another.

    ``anomalib train --model GenAU --data anomalib_genau.data.CrossDataset --data.source MVTecAD
    --data.source_root ./datasets/MVTecAD --data.target Visa --data.target_root ./datasets/visa``

    Each category is read by anomalib's own datamodule (``MVTecAD``, ``MPDD``, ``Visa``,
    ``RealIAD``); defect names come from each dataset's own record (see
    :mod:`anomalib_genau.data.defect_names`) and map through the paper's taxonomy.

    Args:
        source: Training dataset: ``"MVTecAD"``, ``"MPDD"``, ``"Visa"`` or ``"RealIAD"``.
        source_root: Its root folder.
        target: Evaluated dataset, or ``None`` for the source's held-out validation part.
        target_root: Its root folder.
        source_categories: Source categories; ``None`` takes every category on disk.
        target_categories: Target categories; ``None`` takes every category on disk.
        source_options: Extra datamodule arguments (e.g. Real-IAD's ``resolution``, ``json_path``).
        target_options: Extra datamodule arguments of the target.
        val_split_ratio: Fraction of each source category's test split held out for validation.
        multi_type_ratio: Fraction of training items asked the multi-type question.
        instruction_file: Optional JSON-lines file of image/question/answer training records.
        train_batch_size: Training batch size.
        eval_batch_size: Validation / test batch size.
        num_workers: DataLoader workers.
        augmentations: Transforms applied to every split before the model's pre-processor.
        seed: Seed of the split and of the instruction paraphrases.

    Raises:
        ValueError: An unknown dataset, or a category the dataset does not have (the message
            lists the available ones).
        FileNotFoundError: A root that does not exist or holds no category.

    """

    def __init__(
        self,
        source: str = "MVTecAD",
        source_root: str | Path = "./datasets/MVTecAD",
        target: str | None = "Visa",
        target_root: str | Path | None = "./datasets/visa",
        source_categories: list[str] | None = None,
        target_categories: list[str] | None = None,
        source_options: dict[str, Any] | None = None,
        target_options: dict[str, Any] | None = None,
        val_split_ratio: float = 0.2,
        multi_type_ratio: float = 0.25,
        instruction_file: str | Path | None = None,
        train_batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        augmentations: Transform | None = None,
        seed: int = 0,
    ) -> None:
        sources = self._build(source, source_root, source_categories, source_options)
        targets = None if target is None else self._build(target, target_root, target_categories, target_options)
        super().__init__(
            source=sources,
            target=targets,
            val_split_ratio=val_split_ratio,
            multi_type_ratio=multi_type_ratio,
            instruction_file=instruction_file,
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            augmentations=augmentations,
            seed=seed,
        )
        self.source_name = source
        self.target_name = target

    @property
    def name(self) -> str:
        """``MVTecAD_to_Visa``: the results folder of the run."""
        return f"{self.source_name}_to_{self.target_name}" if self.target_name else self.source_name

    @staticmethod
    def _build(
        name: str, root: str | Path | None, categories: list[str] | None, options: dict[str, Any] | None
    ) -> list[AnomalibDataModule]:
        source = dataset_source(name)
        if root is None:
            msg = f"{name} needs a root folder."
            raise ValueError(msg)
        options = {**source.default_options, **(options or {})}
        root = Path(root)
        categories = resolve_categories(source, root, categories, options)
        return [source.build(root, category, options) for category in categories]
