"""Held-out evaluation: the easy/subtle split of the metrics and the nearest-neighbour reference."""

from pathlib import Path

import pytest
import torch

from anomalib_genau.data.synthetic import generate_mvtec_dataset, read_difficulty
from anomalib_genau.evaluation import ImageRecord, NearestNeighbourPatches, part_metrics, reference_records
from anomalib_genau.evaluation.parts import best_threshold_agreement, is_clean, records_from_batches, says_yes


def test_answers_are_read_as_yes_no_and_degenerate_ones_are_not_clean() -> None:
    assert says_yes(" Yes, hole. [SEG_defect] [SEG_normal]") is True
    assert says_yes("No, the carpet is normal.") is False
    assert says_yes("Y, the tr normalet") is None
    assert is_clean("No, the carpet is normal. [SEG_defect] [SEG_normal]")
    assert is_clean("Yes, hole.")
    assert not is_clean("Yes,es,es,es,es")
    assert not is_clean("Yes, the tYes, the tYes, color")


def test_records_are_read_from_anomalib_batches_without_type_fields(tmp_path: Path) -> None:
    """A plain anomalib datamodule's test batches (one-class GenAU) carry no ``pred_types``."""
    from anomalib.data import ImageBatch

    paths = [str(tmp_path / "a" / "test" / name / "0.png") for name in ("good", "hole")]
    batch = ImageBatch(
        image=torch.zeros(2, 3, 4, 4),
        image_path=paths,
        gt_label=torch.tensor([0, 1]),
        gt_mask=torch.zeros(2, 4, 4, dtype=torch.bool),
        anomaly_map=torch.rand(2, 1, 4, 4),
        pred_score=torch.tensor([0.25, 0.75]),
        explanation=["No, the a is normal.", "Yes, anomaly."],
    )
    records = records_from_batches([batch], tmp_path)
    assert [(r.key, r.label, r.score, r.answer) for r in records] == [
        ("a/test/good/0.png", 0, 0.25, "No, the a is normal."),
        ("a/test/hole/0.png", 1, 0.75, "Yes, anomaly."),
    ]
    assert all(r.pred_types is None and r.gt_types is None for r in records)
    assert torch.equal(records[1].anomaly_map, batch.anomaly_map[1].squeeze())
    assert records[1].anomaly_map.shape == (4, 4)


def test_best_threshold_agreement_cuts_only_between_different_scores() -> None:
    labels = torch.tensor([0, 0, 1, 1, 0])
    assert best_threshold_agreement(torch.tensor([0.1, 0.2, 0.8, 0.9, 0.3]), labels) == pytest.approx(1.0)
    assert best_threshold_agreement(torch.tensor([0.1, 0.2, 0.8, 0.9, 0.85]), labels) == pytest.approx(0.8)
    # one tied group: all flagged or none, never the anomalous half of it
    assert best_threshold_agreement(torch.full((5,), 0.5), labels) == pytest.approx(0.6)
    assert best_threshold_agreement(torch.tensor([0.9, 0.9, 0.1, 0.1, 0.9]), labels) == pytest.approx(0.6)


def _record(key: str, label: int, score: float, hot: bool, answer: str) -> ImageRecord:
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 0] = bool(label)
    anomaly_map = torch.zeros(4, 4)
    anomaly_map[0, 0] = 1.0 if hot else 0.0
    return ImageRecord(key, label, mask, anomaly_map, score, answer)


def test_parts_hold_every_normal_image_and_their_own_anomalies() -> None:
    records = [
        _record("a/test/good/0.png", 0, 0.1, False, "No, the a is normal."),
        _record("a/test/good/1.png", 0, 0.2, False, "Yes, hole."),
        _record("a/test/hole/0.png", 1, 0.9, True, "Yes, hole."),  # easy: found
        _record("a/test/hole/1.png", 1, 0.15, False, "No, the a is normal."),  # subtle: missed
    ]
    difficulty = {"a/test/hole/0.png": "easy", "a/test/hole/1.png": "subtle"}
    parts = part_metrics(records, difficulty)
    assert parts["easy"]["image_AUROC"] == pytest.approx(1.0)
    assert parts["subtle"]["image_AUROC"] == pytest.approx(0.5)  # between the two normal scores
    assert parts["easy"]["pixel_AUROC"] == pytest.approx(1.0)
    assert parts["subtle"]["pixel_AUROC"] == pytest.approx(0.5)
    assert parts["easy"]["yes_no_agreement"] == pytest.approx(2 / 3)
    assert parts["all"]["yes_no_agreement"] == pytest.approx(2 / 4)
    assert parts["all"]["clean_answers"] == 1.0
    # the map's maximum flags the easy hole alone: the subtle one ties with the normal images
    assert parts["easy"]["map_max_best_agreement"] == pytest.approx(1.0)
    assert parts["subtle"]["map_max_best_agreement"] == pytest.approx(2 / 3)
    assert parts["all"]["map_max_best_agreement"] == pytest.approx(3 / 4)
    with pytest.raises(KeyError, match=r"not in difficulty\.csv"):
        part_metrics(records, {"a/test/hole/0.png": "easy"})


def test_reference_flags_defects_its_normal_images_lack(tmp_path: Path) -> None:
    root = generate_mvtec_dataset(
        tmp_path, {"tile": ("crack",)}, n_train=2, n_test_good=4, n_test_per_defect=4, image_size=96, seed=5
    )
    records = reference_records(root, ["tile"], size=96)
    assert len(records) == 8
    assert all(record.anomaly_map.shape == (96, 96) for record in records)
    parts = part_metrics(records, read_difficulty(root))
    assert parts["easy"]["pixel_AUROC"] > 0.9
    assert parts["easy"]["image_AUROC"] > 0.9
    with pytest.raises(RuntimeError, match="fit"):
        NearestNeighbourPatches().anomaly_map(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="at least one normal image"):
        NearestNeighbourPatches().fit([])
