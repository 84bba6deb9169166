"""Metrics of a generated test set's easy and subtle parts, from per-image predictions.

anomalib's Evaluator reports one number per test run; the generated data lists which
anomalous images are subtle (``difficulty.csv``), so these metrics split the run: each part
holds every normal image and the anomalous images of that difficulty. Besides anomalib's
AUROCs they score GenAU's text: whether the yes/no answer agrees with the label, whether the
answers are clean (no fragment repeated back to back) and the defect type's weighted F1. Beside
the yes/no agreement, the map maximum's agreement at its best threshold says how many images the
map itself tells apart: an answer that followed the map could agree with no more.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics.functional.classification import binary_auroc

from anomalib_genau.models.genau.metrics import WeightedF1
from anomalib_genau.prompts import SEG_TOKENS

PART_METRICS = (
    "image_AUROC",
    "image_AUROC_map_max",
    "pixel_AUROC",
    "yes_no_agreement",
    "map_max_best_agreement",
    "clean_answers",
    "type_WeightedF1",
)
# a fragment of three or more characters straight after itself: "es,es,", "Yes, the tYes, the t"
_REPEATED_FRAGMENT = re.compile(r"(.{3,})\1")


@dataclass(frozen=True)
class ImageRecord:
    """One tested image: its truth and what a model predicted (``answer`` empty for map-only models)."""

    key: str  # image path relative to the dataset root, as difficulty.csv names it
    label: int
    mask: torch.Tensor  # (H, W) bool
    anomaly_map: torch.Tensor  # (H, W) float, same size as mask
    score: float
    answer: str = ""
    pred_types: torch.Tensor | None = None  # (L,) multi-hot over the type vocabulary
    gt_types: torch.Tensor | None = None


def records_from_batches(batches: Iterable[object], root: str | Path) -> list[ImageRecord]:
    """Per-image records from anomalib prediction batches of images under ``root``."""
    root, records = Path(root).resolve(), []
    for batch in batches:
        masks = batch.gt_mask if batch.gt_mask is not None else torch.zeros_like(batch.anomaly_map, dtype=torch.bool)
        answers = batch.explanation or [""] * len(batch.image_path)
        # anomalib's own batches (a plain datamodule's test split) carry no type fields
        pred_types, gt_types = getattr(batch, "pred_types", None), getattr(batch, "gt_types", None)
        for index, path in enumerate(batch.image_path):
            records.append(
                ImageRecord(
                    key=Path(path).resolve().relative_to(root).as_posix(),
                    label=int(batch.gt_label[index]),
                    # copies: later callbacks (the post-processor) may change the batch in place
                    mask=masks[index].squeeze().bool().clone(),
                    anomaly_map=batch.anomaly_map[index].squeeze().float().clone(),
                    score=float(batch.pred_score[index]),
                    answer=answers[index],
                    pred_types=None if pred_types is None else pred_types[index],
                    gt_types=None if gt_types is None else gt_types[index],
                )
            )
    return records


class TestRecorder(Callback):
    """Keeps the per-image records of the latest test pass, so parts need no second pass over the images.

    Args:
        root: Dataset root the test images lie under (keys are relative to it, as in difficulty.csv).

    """

    def __init__(self, root: str | Path) -> None:
        super().__init__()
        self.root = root
        self.records: list[ImageRecord] = []

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Forget the previous pass."""
        del trainer, pl_module
        self.records = []

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: object,
        batch: object,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Record every image of the tested batch."""
        del trainer, pl_module, batch, batch_idx, dataloader_idx
        self.records.extend(records_from_batches([outputs], self.root))


def says_yes(answer: str) -> bool | None:
    """The binary answer's decision: True for "Yes ...", False for "No ...", None for neither."""
    first = answer.strip().lower()
    if first.startswith("yes"):
        return True
    return False if first.startswith("no") else None


def is_clean(answer: str) -> bool:
    """No fragment of three or more characters repeats back to back (a degenerate decoding)."""
    for token in SEG_TOKENS:
        answer = answer.replace(token, "")
    return _REPEATED_FRAGMENT.search(answer) is None


def best_threshold_agreement(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images that ``scores`` ``(N,)`` classify as ``labels`` ``(N,)`` at the best threshold.

    The threshold is chosen on the images themselves, so no threshold rule on these scores (a
    yes/no answer that followed them, anomalib's F1-adaptive threshold) agrees with more of them.
    """
    scores, labels = scores.float(), labels.float()
    order = scores.argsort(descending=True)
    ranked, flagged = scores[order], labels[order]
    # flag the k highest scores as anomalous, k = 0..N, cutting only between different scores
    true_positives = torch.cat([torch.zeros(1), flagged.cumsum(0)])
    false_positives = torch.arange(len(labels) + 1) - true_positives
    correct = true_positives + (len(labels) - labels.sum()) - false_positives
    cuttable = torch.cat([torch.ones(1, dtype=torch.bool), ranked[:-1] != ranked[1:], torch.ones(1, dtype=torch.bool)])
    return float(correct[cuttable].max() / len(labels))


def _metrics(records: Sequence[ImageRecord]) -> dict[str, float]:
    labels = torch.tensor([r.label for r in records])
    both_classes = 0 < int(labels.sum()) < len(labels)
    nan = float("nan")
    result = dict.fromkeys(PART_METRICS, nan)
    if both_classes:
        result["image_AUROC"] = float(binary_auroc(torch.tensor([r.score for r in records]), labels))
        map_max = torch.stack([r.anomaly_map.max() for r in records])
        result["image_AUROC_map_max"] = float(binary_auroc(map_max, labels))
        result["map_max_best_agreement"] = best_threshold_agreement(map_max, labels)
        pixels = torch.cat([r.anomaly_map.flatten() for r in records])
        truth = torch.cat([r.mask.flatten() for r in records]).long()
        # exact (sorted) AUROC: binned thresholds loop over millions of pixels once per threshold
        result["pixel_AUROC"] = float(binary_auroc(pixels, truth))
    if any(r.answer for r in records):
        result["yes_no_agreement"] = sum(says_yes(r.answer) == bool(r.label) for r in records) / len(records)
        result["clean_answers"] = sum(is_clean(r.answer) for r in records) / len(records)
    if all(r.pred_types is not None and r.gt_types is not None for r in records):
        metric = WeightedF1()
        types = SimpleNamespace(
            pred_types=torch.stack([r.pred_types for r in records]), gt_types=torch.stack([r.gt_types for r in records])
        )
        metric.update(types)
        result["type_WeightedF1"] = float(metric.compute())
    return result


def part_metrics(records: Sequence[ImageRecord], difficulty: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """``{"all" | "easy" | "subtle": {metric: value}}``; each part has every normal image.

    Raises:
        KeyError: An anomalous image is not listed in ``difficulty``.

    """
    parts: dict[str, list[ImageRecord]] = {"all": list(records), "easy": [], "subtle": []}
    for record in records:
        if record.label == 0:
            parts["easy"].append(record)
            parts["subtle"].append(record)
            continue
        if record.key not in difficulty:
            msg = f"Anomalous image '{record.key}' is not in difficulty.csv; was the dataset generated by this project?"
            raise KeyError(msg)
        parts[difficulty[record.key]].append(record)
    return {name: _metrics(part) if part else dict.fromkeys(PART_METRICS, math.nan) for name, part in parts.items()}
