"""``anomalib predict --data DIR`` for GenAU: every image anomalib lists, read as the inferencer reads it.

anomalib's ``Engine.predict`` puts a folder in its ``PredictDataset``, which stops the whole run
at the first file that cannot be decoded and saturates 16-bit images. Before GenAU predicts,
:class:`ReadablePrediction` (a callback) swaps each such loader for one over the same files that
reads them with :func:`~anomalib_genau.data.images.read_rgb` (the OpenVINO inferencer's reader)
and skips, logs and counts unreadable files (:class:`~.instruction_dataset.ReadableBatchLoader`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from anomalib.data import PredictDataset
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader, Dataset

from .dataclasses import GenAUItem
from .images import BrokenImageError, check_patch_size, read_rgb
from .instruction_dataset import ReadableBatchLoader, UnreadableSample

logger = logging.getLogger(__name__)


class ReadableImageFiles(Dataset):
    """Image files as :class:`GenAUItem`; an unreadable one as :class:`UnreadableSample`, recorded in ``unreadable``.

    An image smaller than one vision patch (``patch_size``) is skipped the same way, as the
    OpenVINO inferencer refuses it.

    The dataset records them, not its loader: Lightning rebuilds a predict loader (its sampler),
    but keeps the dataset.
    """

    def __init__(self, files: list[Path], patch_size: int = 1) -> None:
        self.files = files
        self.patch_size = patch_size
        self.unreadable: list[UnreadableSample] = []

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> GenAUItem | UnreadableSample:
        path = self.files[index]
        try:
            image = read_rgb(path)
            check_patch_size(image, self.patch_size, str(path))
        except (BrokenImageError, ValueError) as error:
            logger.warning("Skipping unreadable image: %s", error)
            sample = UnreadableSample(str(path), "", str(error))
            self.unreadable.append(sample)
            return sample
        return GenAUItem(image=image, image_path=str(path))


class ReadablePrediction(Callback):
    """Replace anomalib's ``PredictDataset`` loaders of a predict run by readable ones.

    Their unreadable files are in :attr:`unreadable` after the run (the prediction writer
    reports them).
    """

    def __init__(self) -> None:
        super().__init__()
        self.datasets: list[ReadableImageFiles] = []

    @property
    def unreadable(self) -> list[UnreadableSample]:
        """The files skipped so far in this run."""
        return [sample for dataset in self.datasets for sample in dataset.unreadable]

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Swap the loaders ``trainer.predict(dataloaders=...)`` was given, before the predict loop reads them.

        Lightning keeps them in its predict loop's data source (no public setter exists).
        """
        self.datasets = []
        source = getattr(trainer.predict_loop, "_data_source", None)
        if stage != "predict" or source is None or source.instance is None:
            return
        patch_size = pl_module.model.llava.config.vision_config.patch_size
        loaders = source.instance if isinstance(source.instance, list) else [source.instance]
        replaced = [self._readable(loader, patch_size) for loader in loaders]
        source.instance = replaced if isinstance(source.instance, list) else replaced[0]

    def _readable(self, loader: object, patch_size: int) -> object:
        if not isinstance(loader, DataLoader) or type(loader.dataset) is not PredictDataset:
            return loader
        dataset = ReadableImageFiles(sorted(Path(path) for path in loader.dataset.image_filenames), patch_size)
        self.datasets.append(dataset)
        return ReadableBatchLoader(dataset, batch_size=loader.batch_size, num_workers=0)
