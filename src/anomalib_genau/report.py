"""Per-category test metrics in the layout of the paper's Table 1, written as CSV and Markdown.

anomalib's Evaluator reports one value per metric over the whole test set; the paper reports
each target category and their mean. :class:`CategoryReport` keeps one set of anomalib
metrics per category and, on a single process, computes and frees a category's state as soon
as its batches have passed (the datamodules keep categories contiguous), so a dataset of
Real-IAD's size never holds more than one category's maps. Under several processes every
category is computed at the end, in the same order on every rank, so torchmetrics can sync.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from anomalib.data import ImageBatch
from anomalib.metrics import AUPRO, AUROC, AnomalibMetric, create_anomalib_metric
from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics.classification import BinaryAveragePrecision

from anomalib_genau.data.unusable_files import datamodule_category, dropped_samples
from anomalib_genau.taxonomy import PROVISIONAL_DATASETS

logger = logging.getLogger(__name__)

AP = create_anomalib_metric(BinaryAveragePrecision)

# The paper's Table 1 order.
COLUMNS = ("Pixel AUROC", "Pixel AUPRO", "Image AUROC", "Image AP")


def _report_metrics() -> dict[str, AnomalibMetric]:
    return {
        "Pixel AUROC": AUROC(fields=["anomaly_map", "gt_mask"], strict=False),
        "Pixel AUPRO": AUPRO(fields=["anomaly_map", "gt_mask"], strict=False),
        "Image AUROC": AUROC(fields=["pred_score", "gt_label"]),
        "Image AP": AP(fields=["pred_score", "gt_label"]),
    }


@dataclass
class CategoryRow:
    """One line of the report; metric values are fractions (the tables print percentages)."""

    dataset: str
    category: str
    images: int = 0
    unreadable: int = 0
    without_mask: int = 0
    values: dict[str, float] = field(default_factory=dict)
    anomalous: int = 0  # of ``images``: both classes are needed for the image metrics


def _select(batch: ImageBatch, rows: list[int]) -> ImageBatch:
    """The metric fields of some rows of a batch (a field the batch lacks stays ``None``)."""
    index = torch.tensor(rows)
    fields = ("image", "gt_label", "gt_mask", "anomaly_map", "pred_score")
    values = {name: getattr(batch, name, None) for name in fields}
    return ImageBatch(**{name: None if value is None else value[index] for name, value in values.items()})


class CategoryReport(Callback):
    """After testing, write ``category_report.csv`` and ``.md`` to the run folder and print the table.

    Rows are the test categories and their mean; columns are pixel AUROC and AUPRO and image
    AUROC and AP (anomalib's metrics, AP from torchmetrics), plus the number of images tested,
    the unreadable files skipped and the anomalous images left out for lack of a mask.
    """

    def __init__(self, filename: str = "category_report") -> None:
        super().__init__()
        self.filename = filename
        self.rows: dict[str, CategoryRow] = {}
        self.metrics: dict[str, dict[str, AnomalibMetric]] = {}
        self.streaming: str | None = None
        self.datasets: dict[str, str] = {}

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start an empty report."""
        del pl_module
        self.rows, self.metrics, self.streaming = {}, {}, None
        self.datasets = self._datasets(trainer)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: ImageBatch,
        batch: ImageBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Add the batch to its categories' metrics; finish a category whose batches have passed."""
        del pl_module, batch, batch_idx, dataloader_idx
        default = datamodule_category(trainer.datamodule)
        categories = getattr(outputs, "category", None) or [default] * len(outputs.image)
        for category in dict.fromkeys(categories):
            rows = [row for row, name in enumerate(categories) if name == category]
            if category != self.streaming and trainer.world_size == 1 and self.streaming is not None:
                self._finish(self.streaming)
            self.streaming = category
            metrics = self.metrics.setdefault(category, _report_metrics())
            row = self.rows.setdefault(category, CategoryRow(self.datasets.get(category, ""), category))
            row.images += len(rows)
            selected = _select(outputs, rows)
            if selected.gt_label is not None:
                row.anomalous += int(selected.gt_label.bool().sum())
            for metric in metrics.values():
                metric.to(outputs.pred_score.device).update(selected)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Finish the remaining categories, then write and print the report."""
        del pl_module
        categories = sorted(self.metrics)
        if trainer.world_size > 1:
            categories = self._synchronise(trainer)
        for category in categories:
            self._finish(category)
        self._add_skipped(trainer)
        if trainer.is_global_zero and self.rows:
            markdown = self.write(Path(trainer.default_root_dir))
            print(markdown)

    def _synchronise(self, trainer: Trainer) -> list[str]:
        """Under several processes: the union of their categories, in one order, and summed counts.

        A process that saw no image of a category gets empty metrics for it, so every process
        computes (and torchmetrics syncs) the same categories in the same order.
        """
        gathered: list[list[str]] = [[] for _ in range(trainer.world_size)]
        torch.distributed.all_gather_object(gathered, sorted(self.rows))
        categories = sorted({category for names in gathered for category in names})
        for category in categories:
            self.metrics.setdefault(category, _report_metrics())
            row = self.rows.setdefault(category, CategoryRow(self.datasets.get(category, ""), category))
            row.images = int(trainer.strategy.reduce(torch.tensor(float(row.images)), reduce_op="sum"))
            row.anomalous = int(trainer.strategy.reduce(torch.tensor(float(row.anomalous)), reduce_op="sum"))
        return categories

    def _finish(self, category: str) -> None:
        """Compute a category's metrics and free their state."""
        metrics = self.metrics.pop(category, None)
        if metrics is None:
            return
        # a metric without data (pixel metrics of a category without masks: strict=False) computes None
        values = {name: metric.compute() for name, metric in metrics.items()}
        row = self.rows[category]
        row.values = {name: math.nan if value is None else float(value) for name, value in values.items()}
        if row.anomalous in {0, row.images}:  # one class only: torchmetrics would report 0 or 1
            kind = "normal" if row.anomalous == 0 else "anomalous"
            logger.warning(
                "%s: all %d test images are %s, image AUROC and AP are undefined.", category, row.images, kind
            )
            row.values |= {"Image AUROC": math.nan, "Image AP": math.nan}

    @staticmethod
    def _datasets(trainer: Trainer) -> dict[str, str]:
        """Category -> taxonomy dataset of the test data, where the datamodule says."""
        test_data = getattr(trainer.datamodule, "test_data", None)
        return {part.category: part.taxonomy_key or "" for part in getattr(test_data, "parts", [])}

    def _add_skipped(self, trainer: Trainer) -> None:
        """Count unusable files (skipped by the loaders or dropped from an anomalib test split) and masks missing."""
        loaders = trainer.test_dataloaders
        test_data = getattr(trainer.datamodule, "test_data", None)
        skipped = dropped_samples(test_data)
        for loader in loaders if isinstance(loaders, list | tuple) else [loaders]:
            skipped += getattr(loader, "unreadable", [])
        for sample in skipped:
            self.rows.setdefault(sample.category, CategoryRow("", sample.category)).unreadable += 1
        for category, count in getattr(test_data, "without_mask", {}).items():
            if category in self.rows:
                self.rows[category].without_mask = count

    def table(self) -> list[dict[str, str | int | float]]:
        """The report's rows, categories in test order then ``mean``; metrics in percent."""
        rows: list[dict[str, str | int | float]] = []
        for row in self.rows.values():
            values = {column: round(100 * row.values.get(column, math.nan), 2) for column in COLUMNS}
            counts = {"Images": row.images, "Unreadable": row.unreadable, "Without mask": row.without_mask}
            rows.append({"Dataset": row.dataset, "Category": row.category, **values, **counts})
        mean = {column: round(_nanmean([r[column] for r in rows]), 2) for column in COLUMNS}
        totals = {key: sum(int(r[key]) for r in rows) for key in ("Images", "Unreadable", "Without mask")}
        rows.append({"Dataset": "", "Category": "mean", **mean, **totals})
        return rows

    def write(self, folder: Path) -> str:
        """Write ``<filename>.csv`` and ``<filename>.md`` under ``folder``; returns the Markdown."""
        rows = self.table()
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / f"{self.filename}.csv").open("w", encoding="utf-8", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        header = list(rows[0])
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---" if key in {"Dataset", "Category"} else "---:" for key in header) + "|",
        ]
        for row in rows:
            cells = [f"{row[key]:.1f}" if key in COLUMNS else str(row[key]) for key in header]
            lines.append("| " + " | ".join(cells) + " |")
        datasets = {row.dataset for row in self.rows.values()}
        if datasets & PROVISIONAL_DATASETS:
            lines.append("\nMPDD's defect-type mapping is provisional (the paper's table is not legible in our copy).")
        markdown = "\n".join(lines) + "\n"
        (folder / f"{self.filename}.md").write_text(markdown, encoding="utf-8")
        return markdown


def _nanmean(values: list[float | int | str]) -> float:
    numbers = [float(value) for value in values if not math.isnan(float(value))]
    return sum(numbers) / len(numbers) if numbers else math.nan
