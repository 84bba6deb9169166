"""anomalib's own datasets for GenAU: files that cannot be used are dropped before a run, logged and counted.

anomalib's ``AnomalibDataset`` reads a file when its item is drawn: one truncated image ends a
one-class training or a test deep in PIL, an anomalous image whose mask is missing ends it the
same way, and ``read_image`` saturates a 16-bit grayscale image to white without a word.
anomalib offers no hook to skip such a file, so before GenAU trains, tests or predicts on an
anomalib datamodule (``MVTecAD``, ``Folder``, ...), :class:`SkipUnusableFiles` (a callback)
decodes each image of the splits that the stage reads, once per dataset, and removes the rows
that anomalib would fail on or read wrongly. Each is logged; the test split's are counted in the
category report's "Unreadable" column and a predict run's are listed in ``predictions.jsonl``. GenAU's own datasets
(``CrossDataset``, ``GenAUDataModule``) read with :func:`~.images.read_rgb` and skip per item.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from weakref import WeakKeyDictionary

from anomalib import TaskType
from anomalib.data.datasets.base import AnomalibDataset
from anomalib.data.utils import LabelName
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from PIL import Image

from .images import DECODE_ERRORS, is_high_bit_depth
from .instruction_dataset import UnreadableSample

logger = logging.getLogger(__name__)

# The splits each stage reads (anomalib's predict loader is its test loader).
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}

# The rows dropped from each dataset: a dataset is checked once, and its count outlives the run
# (a fit and the test after it share the datamodule's datasets).
_DROPPED: WeakKeyDictionary[AnomalibDataset, list[UnreadableSample]] = WeakKeyDictionary()


def datamodule_category(datamodule: LightningDataModule | None) -> str:
    """The category that a datamodule of one category (or none) reports under: its ``category``, or ``"all"``."""
    return str(getattr(datamodule, "category", None) or "all")


def _decoded_mode(path: str) -> str:
    """Decode a file wholly (a header alone hides truncation) and return its PIL mode; raises ``DECODE_ERRORS``."""
    with Image.open(path) as image:
        image.load()
        return image.mode


def unusable_reason(image_path: str, mask_path: object = None, needs_mask: bool = False) -> str | None:
    """Why anomalib's reader would fail on or misread an image (and the mask it needs), or ``None``."""
    try:
        mode = _decoded_mode(image_path)
    except DECODE_ERRORS as error:
        return f"cannot read the image: {error}"
    if is_high_bit_depth(mode):
        return f"pixels of more than 8 bits (PIL mode {mode}), which anomalib's reader saturates: convert it to 8 bits"
    if not needs_mask:
        return None
    if not isinstance(mask_path, str) or not mask_path:
        return "an anomalous image without a mask"
    try:
        _decoded_mode(mask_path)
    except DECODE_ERRORS as error:
        return f"cannot read its mask {mask_path}: {error}"
    return None


def drop_unusable(dataset: AnomalibDataset, split: str, category: str) -> list[UnreadableSample]:
    """Remove the rows of ``dataset`` that cannot be used, log each, and return them (once per dataset).

    Raises:
        ValueError: No row of the split can be used (the message names the first files and why).

    """
    if dataset in _DROPPED:
        return _DROPPED[dataset]
    samples = dataset.samples
    segmentation = dataset.task == TaskType.SEGMENTATION
    rows = list(samples.itertuples())

    def reason_of(row: tuple) -> str | None:
        needs_mask = segmentation and row.label_index == LabelName.ABNORMAL
        return unusable_reason(str(row.image_path), getattr(row, "mask_path", None), needs_mask)

    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:  # PIL decodes without the GIL
        reasons = list(pool.map(reason_of, rows))
    dropped: list[UnreadableSample] = []
    keep = [reason is None for reason in reasons]
    for row, reason in zip(rows, reasons, strict=True):
        if reason is not None:
            logger.warning("Skipping %s of the %s split: %s", row.image_path, split, reason)
            dropped.append(UnreadableSample(str(row.image_path), category, reason))
    if dropped and not any(keep):
        listed = "; ".join(f"{sample.path}: {sample.reason}" for sample in dropped[:3])
        msg = f"No file of the {split} split ({len(dropped)}) can be used, e.g. {listed}"
        raise ValueError(msg)
    if dropped:
        dataset.samples = samples[keep]  # keeps the frame's attrs (the task)
        logger.warning("Skipped %d of %d files of the %s split.", len(dropped), len(keep), split)
    _DROPPED[dataset] = dropped
    return dropped


def dropped_samples(dataset: object) -> list[UnreadableSample]:
    """The rows :func:`drop_unusable` removed from ``dataset`` (none for any other dataset)."""
    return list(_DROPPED.get(dataset, [])) if isinstance(dataset, AnomalibDataset) else []


class SkipUnusableFiles(Callback):
    """Before a run reads an anomalib datamodule, drop the files of its splits that cannot be used.

    Lightning sets the datamodule up before the callbacks, so its datasets exist here.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check the anomalib datasets of the splits that ``stage`` reads (``STAGE_SPLITS``)."""
        del pl_module
        datamodule = trainer.datamodule
        for split in STAGE_SPLITS.get(stage, ()):
            dataset = getattr(datamodule, f"{split}_data", None)
            if isinstance(dataset, AnomalibDataset):
                drop_unusable(dataset, split, datamodule_category(datamodule))
