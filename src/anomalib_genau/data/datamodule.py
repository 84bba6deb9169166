"""Train GenAU on the *test* split of a source anomalib datamodule, test on a target's.

anomalib's train splits hold normal images only; GenAU learns from masks and defect types,
which only the test splits have (paper 5.2: MVTec-AD's test split is the training set). The
source test split is divided, label-stratified, into training and validation images; the
validation part gives anomalib's PostProcessor its thresholds and never sees target labels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomalib.data import AnomalibDataModule
from anomalib.data.utils.split import TestSplitMode, ValSplitMode
from torch.utils.data import DataLoader, Sampler
from torchvision.transforms.v2 import Transform

from .instruction_dataset import (
    CategoryData,
    EpochSeededSampler,
    InstructionDataset,
    ReadableBatchLoader,
    category_data,
)
from .instruction_file import load_instruction_file
from .sources import DATASET_SOURCES, dataset_source, resolve_categories

logger = logging.getLogger(__name__)


DataModules = AnomalibDataModule | Sequence[AnomalibDataModule]


class GenAUDataModule(AnomalibDataModule):
    """Source test splits for training (and validation), target test splits for testing.

    Args:
        source: anomalib datamodule(s), one category each, whose test splits (masks, defect
            names) train GenAU.
        target: anomalib datamodule(s) whose test splits are evaluated; ``None`` tests on the
            held-out validation part of the source (a smoke-test setting, not cross-dataset).
        val_split_ratio: Fraction of each source category's test split held out for validation.
        synthetic_ratio: Fraction of normal training items turned into synthetic anomalies
            beside the real defects (project's choice: 0, off).
        multi_type_ratio: Fraction of training items asked the multi-type question instead of
            the binary one (project's choice: 0.25; the paper mixes both without a ratio).
        instruction_file: Optional JSON-lines file of image/question/answer records added to
            the training set (see :mod:`anomalib_genau.data.instruction_file`).
        train_batch_size: Training batch size.
        eval_batch_size: Validation / test batch size.
        num_workers: DataLoader workers.
        train_augmentations: Transforms applied to the training items before the model's
            pre-processor, image and mask alike (e.g. random flips); anomalib's datamodule argument.
        val_augmentations: Transforms applied to the validation items.
        test_augmentations: Transforms applied to the test items.
        augmentations: Transforms applied to every split that has none of its own.
        seed: Seed of the split and of the instruction paraphrases.

    """

    def __init__(
        self,
        source: DataModules,
        target: DataModules | None = None,
        val_split_ratio: float = 0.2,
        multi_type_ratio: float = 0.25,
        synthetic_ratio: float = 0.0,
        instruction_file: str | Path | None = None,
        train_batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            seed=seed,
        )
        self.source = source
        self.target = target
        self.val_split_ratio = val_split_ratio
        self.multi_type_ratio = multi_type_ratio
        if not 0.0 <= synthetic_ratio <= 1.0:
            msg = f"synthetic_ratio must be in [0, 1], got {synthetic_ratio}."
            raise ValueError(msg)
        self.synthetic_ratio = synthetic_ratio
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
        self.train_data = InstructionDataset(
            train, self.seed, multi_type_ratio=self.multi_type_ratio, synthetic_ratio=self.synthetic_ratio
        )
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
        synthetic_ratio: Fraction of normal training items turned into synthetic anomalies.
        instruction_file: Optional JSON-lines file of image/question/answer training records.
        train_batch_size: Training batch size.
        eval_batch_size: Validation / test batch size.
        num_workers: DataLoader workers.
        train_augmentations: Transforms applied to the training items before the model's
            pre-processor, image and mask alike (e.g. random flips); anomalib's datamodule argument.
        val_augmentations: Transforms applied to the validation items.
        test_augmentations: Transforms applied to the test items.
        augmentations: Transforms applied to every split that has none of its own.
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
        synthetic_ratio: float = 0.0,
        instruction_file: str | Path | None = None,
        train_batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
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
            synthetic_ratio=synthetic_ratio,
            instruction_file=instruction_file,
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
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
