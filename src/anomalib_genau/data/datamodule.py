"""Train GenAU on the *test* split of a source anomalib datamodule, test on a target's.

anomalib's train splits hold normal images only; GenAU learns from masks and defect types,
which only the test splits have (paper 5.2: MVTec-AD's test split is the training set). The
source test split is divided, label-stratified, into training and validation images; the
validation part gives anomalib's PostProcessor its thresholds and never sees target labels.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from anomalib.data import AnomalibDataModule
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.utils.split import random_split
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms.v2 import Transform

from anomalib_genau import prompts
from anomalib_genau.taxonomy import DATAMODULE_TO_DATASET, defect_types, object_name

from .dataclasses import GenAUBatch, GenAUItem


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


class InstructionDataset(Dataset):
    """An anomalib image dataset whose items also carry GenAU's instruction and response.

    Args:
        dataset: The wrapped anomalib dataset (its samples are read lazily, one per item).
        taxonomy_dataset: Taxonomy key of the data (``"mvtec_ad"``...) or ``None``.
        category: Product name; ``None`` takes the dataset's ``category`` attribute.
        paraphrase_seed: Seed of per-sample paraphrased instructions; ``None`` uses the
            canonical instruction (evaluation).

    """

    def __init__(
        self,
        dataset: AnomalibDataset,
        taxonomy_dataset: str | None,
        category: str | None = None,
        paraphrase_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.taxonomy_dataset = taxonomy_dataset
        self.category = category or getattr(dataset, "category", None) or getattr(dataset, "name", "object")
        self.paraphrase_seed = paraphrase_seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> object:
        """Everything else anomalib reads of a dataset (``samples``, ``task``, ``has_normal``...)."""
        if name == "dataset":  # not set yet (e.g. while unpickling): avoid recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    @property
    def augmentations(self) -> Transform | None:
        """The wrapped dataset's augmentations (anomalib's datamodule sets them)."""
        return self.dataset.augmentations

    @augmentations.setter
    def augmentations(self, value: Transform | None) -> None:
        self.dataset.augmentations = value

    @property
    def collate_fn(self) -> Callable[[list[GenAUItem]], GenAUBatch]:
        """Collate into :class:`GenAUBatch`."""
        return GenAUBatch.collate

    def defect_name(self, index: int) -> str:
        """Original defect name of a sample: its image's parent folder (``good`` when normal)."""
        sample = self.dataset.samples.iloc[index]
        return "good" if int(sample.label_index) == 0 else Path(sample.image_path).parent.name

    def __getitem__(self, index: int) -> GenAUItem:
        item = self.dataset[index]
        types = defect_types(self.taxonomy_dataset, self.category, self.defect_name(index))
        name = object_name(self.category)
        rng = None if self.paraphrase_seed is None else random.Random(self.paraphrase_seed * 1_000_003 + index)
        return GenAUItem(
            image=item.image,
            gt_label=item.gt_label,
            gt_mask=item.gt_mask,
            image_path=item.image_path,
            mask_path=item.mask_path,
            category=self.category,
            defect_type=", ".join(types),
            instruction=prompts.instruction(name, rng),
            response=prompts.response(name, types),
        )


def taxonomy_key(datamodule: AnomalibDataModule) -> str | None:
    """Taxonomy dataset key of an anomalib datamodule (``MVTecAD -> "mvtec_ad"``), else ``None``."""
    return DATAMODULE_TO_DATASET.get(type(datamodule).__name__)


class GenAUDataModule(AnomalibDataModule):
    """Source test split for training (and validation), target test split for testing.

    Args:
        source: anomalib datamodule whose test split (masks, defect folders) trains GenAU.
        target: anomalib datamodule whose test split is evaluated; ``None`` tests on the
            held-out validation part of the source (a smoke-test setting, not cross-dataset).
        val_split_ratio: Fraction of the source test split held out for validation.
        train_batch_size: Training batch size.
        eval_batch_size: Validation / test batch size.
        num_workers: DataLoader workers.
        augmentations: Transforms applied to every split before the model's pre-processor.
        seed: Seed of the split and of the instruction paraphrases.

    """

    def __init__(
        self,
        source: AnomalibDataModule,
        target: AnomalibDataModule | None = None,
        val_split_ratio: float = 0.2,
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

    @property
    def category(self) -> str:
        """Category of the evaluated data, for anomalib's results folders."""
        return (self.target or self.source).category

    @category.setter
    def category(self, category: str) -> None:
        del category  # the categories are the source's and the target's own

    def prepare_data(self) -> None:
        """Let the source and target datamodules check (or fetch) their files."""
        for datamodule in (self.source, self.target):
            if datamodule is not None:
                datamodule.prepare_data()

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches whose order is a function of ``(seed, epoch)``."""
        return DataLoader(
            self.train_data,
            batch_size=self.train_batch_size,
            sampler=EpochSeededSampler(len(self.train_data), self.seed),
            num_workers=self.num_workers,
            collate_fn=self.train_data.collate_fn,
        )

    def _create_test_split(self) -> None:
        """Keep the target's test split whole: ``_setup`` already defines every split."""

    def _create_val_split(self) -> None:
        """Keep the validation split ``_setup`` carved out of the source test split."""

    def _setup(self, _stage: str | None = None) -> None:
        self.source.setup()
        train, val = random_split(self.source.test_data, self.val_split_ratio, label_aware=True, seed=self.seed)
        source_key = taxonomy_key(self.source)
        self.train_data = InstructionDataset(train, source_key, self.source.category, paraphrase_seed=self.seed)
        self.val_data = InstructionDataset(val, source_key, self.source.category)
        if self.target is None:
            self.test_data = self.val_data
        else:
            self.target.setup()
            self.test_data = InstructionDataset(self.target.test_data, taxonomy_key(self.target), self.target.category)
