"""``predictions.jsonl``: one machine-readable record per image predicted by ``anomalib predict``.

Each line holds ``image_path``, ``pred_score``, ``pred_label``, ``pred_defect_type`` (the list
of predicted coarse types, ``[]`` when normal, ``null`` when no type was asked for),
``explanation`` (the model's answer text) and ``mask_path``, a PNG of the predicted mask
(0/255) written next to the file under ``masks/``. The field names are anomalib's batch
fields; ``anomalib-genau infer`` (the OpenVINO inferencer's ``GenAUPrediction.summary``)
writes the same record plus ``input_size``. A file that could not be read is skipped and, at
the end of the run, gets a line of its own, as in ``infer``: ``{"image_path": ..., "error": ...}``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from anomalib.data import ImageBatch
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image

logger = logging.getLogger(__name__)


class PredictionWriter(Callback):
    """Append each predicted image's record to ``<run folder>/predictions.jsonl``.

    Args:
        filename: Name of the JSON-lines file in the run folder.

    """

    def __init__(self, filename: str = "predictions.jsonl") -> None:
        super().__init__()
        self.filename = filename
        self.path: Path | None = None
        self.count = 0

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start a fresh file in the run folder."""
        del pl_module
        self.path = Path(trainer.default_root_dir) / self.filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("", encoding="utf-8")
        self.count = 0

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: ImageBatch,
        batch: ImageBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Write the batch's masks and records."""
        del pl_module, batch, batch_idx, dataloader_idx
        if self.path is None:
            return
        masks = self.path.parent / "masks"
        with self.path.open("a", encoding="utf-8") as file:
            for item in outputs:
                record = self.record(item, masks, f"{trainer.global_rank}_{self.count:06d}")
                file.write(json.dumps(record, ensure_ascii=False) + "\n")
                self.count += 1

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Add a line per file skipped (by a readable loader or from an anomalib split), and log their count."""
        del pl_module
        from anomalib_genau.data.predict import ReadablePrediction
        from anomalib_genau.data.unusable_files import dropped_samples

        skipped = dropped_samples(getattr(trainer.datamodule, "test_data", None))
        skipped += [
            sample for cb in trainer.callbacks if isinstance(cb, ReadablePrediction) for sample in cb.unreadable
        ]
        if self.path is None or not skipped:
            return
        with self.path.open("a", encoding="utf-8") as file:
            for sample in skipped:
                file.write(json.dumps({"image_path": sample.path, "error": sample.reason}, ensure_ascii=False) + "\n")
        logger.warning("%d unreadable image(s) skipped; %d predicted (%s).", len(skipped), self.count, self.path)

    @staticmethod
    def record(item: Any, masks: Path, key: str) -> dict[str, Any]:
        """The JSON record of one predicted item; saves its predicted mask as ``masks/<key>_<stem>.png``."""
        image_path = str(item.image_path or key)
        mask_path = None
        if item.pred_mask is not None:
            masks.mkdir(parents=True, exist_ok=True)
            name = f"{key}_{Path(image_path).stem}.png"
            mask = np.asarray(item.pred_mask.detach().cpu().squeeze()).astype(np.uint8) * 255
            Image.fromarray(mask).save(masks / name)
            mask_path = str(masks / name)
        return {
            "image_path": image_path,
            "pred_score": None if item.pred_score is None else round(float(item.pred_score), 6),
            "pred_label": None if item.pred_label is None else int(item.pred_label),
            "pred_defect_type": getattr(item, "pred_defect_type", None),
            "explanation": item.explanation,
            "mask_path": mask_path,
        }
