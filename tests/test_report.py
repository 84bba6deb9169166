"""The per-category report: values equal anomalib's metrics per category, skips counted, files written."""

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from anomalib.engine import Engine

from anomalib_genau import GenAU
from anomalib_genau.data import CrossDataset, GenAUBatch
from anomalib_genau.data.synthetic_layouts import LAYOUT_GENERATORS
from anomalib_genau.report import CategoryReport, CategoryRow

COUNTS = {"n_train": 1, "n_test_good": 3, "n_test_per_defect": 2, "image_size": 64}


def test_table_means_over_categories_and_marks_mpdd_provisional(tmp_path: Path) -> None:
    report = CategoryReport()
    values = {"Pixel AUROC": 0.9, "Pixel AUPRO": 0.5, "Image AUROC": 0.8, "Image AP": math.nan}
    report.rows = {
        "bracket_black": CategoryRow("mpdd", "bracket_black", 10, 1, 0, values),
        "tubes": CategoryRow("mpdd", "tubes", 6, 0, 2, {**values, "Image AP": 0.7, "Pixel AUROC": 0.7}),
    }
    markdown = report.write(tmp_path)
    rows = list(csv.DictReader((tmp_path / "category_report.csv").open()))
    assert [row["Category"] for row in rows] == ["bracket_black", "tubes", "mean"]
    assert rows[-1]["Pixel AUROC"] == "80.0"
    assert rows[-1]["Image AP"] == "70.0"  # NaN categories do not enter the mean
    assert (rows[-1]["Images"], rows[-1]["Unreadable"], rows[-1]["Without mask"]) == ("16", "1", "2")
    assert "| mpdd | bracket_black | 90.0 | 50.0 | 80.0 | nan | 10 | 1 | 0 |" in markdown
    assert "provisional" in markdown
    assert (tmp_path / "category_report.md").read_text() == markdown


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    for layout in ("MVTecAD", "Visa"):
        LAYOUT_GENERATORS[layout](root / layout, seed=2, **COUNTS)
    corrupt = root / "Visa" / "candle" / "Data" / "Images" / "Normal" / "0003.JPG"  # a test image
    corrupt.write_bytes(b"\xff\xd8\xff truncated")
    return root


def _test(model: GenAU, root: Path, results: Path, categories: list[str] | None) -> tuple[dict, Path]:
    datamodule = CrossDataset(
        source="MVTecAD",
        source_root=root / "MVTecAD",
        target="Visa",
        target_root=root / "Visa",
        target_categories=categories,
        eval_batch_size=4,
    )
    engine = Engine(default_root_dir=results, accelerator="cpu", devices=1, logger=False)
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    return metrics, Path(engine.trainer.default_root_dir)


def test_report_rows_equal_anomalib_metrics_of_each_category(
    tiny_backbone: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = GenAU(backbone=str(tiny_backbone), max_new_tokens=6, visualizer=False)
    _, run_dir = _test(model, data_root, tmp_path / "all", None)
    assert "| visa | candle |" in capsys.readouterr().out
    rows = {row["Category"]: row for row in csv.DictReader((run_dir / "category_report.csv").open())}
    assert list(rows) == ["candle", "pcb1", "mean"]
    assert (rows["candle"]["Images"], rows["candle"]["Unreadable"]) == ("9", "1")  # 3 good + 3 x 2 + 1 - 1
    assert (rows["pcb1"]["Images"], rows["pcb1"]["Unreadable"]) == ("10", "0")
    assert (run_dir / "category_report.md").is_file()
    for category in ("candle", "pcb1"):
        alone, _ = _test(model, data_root, tmp_path / category, [category])
        row = rows[category]
        assert float(row["Image AUROC"]) == pytest.approx(100 * alone["image_AUROC"], abs=0.006)
        assert float(row["Pixel AUROC"]) == pytest.approx(100 * alone["pixel_AUROC"], abs=0.006)
        assert float(row["Pixel AUPRO"]) == pytest.approx(100 * alone["pixel_AUPRO"], abs=0.006)
    mean = sum(float(rows[c]["Image AP"]) for c in ("candle", "pcb1")) / 2
    assert float(rows["mean"]["Image AP"]) == pytest.approx(mean, abs=0.006)


def _batch(category: str, labels: list[int]) -> GenAUBatch:
    size = len(labels)
    masks = torch.zeros(size, 8, 8, dtype=torch.bool)
    for row, label in enumerate(labels):
        masks[row, :4, :4] = bool(label)
    return GenAUBatch(
        image=torch.rand(size, 3, 8, 8),
        gt_label=torch.tensor(labels),
        gt_mask=masks,
        anomaly_map=torch.rand(size, 8, 8) + masks.float(),
        pred_score=torch.tensor(labels, dtype=torch.float32) + 0.1 * torch.rand(size),
        category=[category] * size,
    )


def test_a_category_is_computed_and_freed_when_the_next_one_starts(tmp_path: Path) -> None:
    report = CategoryReport()
    trainer = SimpleNamespace(world_size=1, datamodule=None, is_global_zero=True, default_root_dir=tmp_path)
    report.on_test_epoch_start(trainer, None)
    report.on_test_batch_end(trainer, None, _batch("candle", [0, 1, 0, 1]), None, 0)
    report.on_test_batch_end(trainer, None, _batch("candle", [1, 0]), None, 1)
    assert list(report.metrics) == ["candle"]
    report.on_test_batch_end(trainer, None, _batch("pcb1", [1, 0, 1]), None, 2)
    assert list(report.metrics) == ["pcb1"]  # only the streaming category holds state
    assert report.rows["candle"].values["Image AUROC"] == pytest.approx(1.0)
    assert report.rows["candle"].images == 6
    trainer.test_dataloaders = []
    report.on_test_epoch_end(trainer, None)
    assert report.metrics == {}
    assert (tmp_path / "category_report.csv").is_file()


def test_a_category_without_masks_reports_no_pixel_metrics(tmp_path: Path) -> None:
    """A user's Folder without mask_dir: pixel metrics are empty (NaN in the table), image ones computed."""
    report = CategoryReport()
    trainer = SimpleNamespace(world_size=1, datamodule=None, is_global_zero=True, default_root_dir=tmp_path)
    report.on_test_epoch_start(trainer, None)
    batch = _batch("widget", [0, 1, 1])
    batch.gt_mask = None
    report.on_test_batch_end(trainer, None, batch, None, 0)
    trainer.test_dataloaders = []
    report.on_test_epoch_end(trainer, None)
    values = report.rows["widget"].values
    assert math.isnan(values["Pixel AUROC"]) and math.isnan(values["Pixel AUPRO"])
    assert values["Image AUROC"] == pytest.approx(1.0)


def test_a_category_of_one_class_has_no_image_auroc(tmp_path: Path) -> None:
    """Only anomalous test images (a one-image category, a Folder without normal test images): NaN, not 0."""
    report = CategoryReport()
    trainer = SimpleNamespace(world_size=1, datamodule=None, is_global_zero=True, default_root_dir=tmp_path)
    report.on_test_epoch_start(trainer, None)
    report.on_test_batch_end(trainer, None, _batch("widget", [1]), None, 0)
    report.on_test_batch_end(trainer, None, _batch("gadget", [0, 1]), None, 1)
    trainer.test_dataloaders = []
    report.on_test_epoch_end(trainer, None)
    assert math.isnan(report.rows["widget"].values["Image AUROC"]) and math.isnan(
        report.rows["widget"].values["Image AP"]
    )
    assert report.rows["widget"].values["Pixel AUROC"] == pytest.approx(report.rows["widget"].values["Pixel AUROC"])
    assert report.rows["gadget"].values["Image AUROC"] == pytest.approx(1.0)
