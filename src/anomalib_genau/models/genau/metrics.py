"""Weighted precision, recall and F1 of the multi-type answers, as anomalib metrics (paper 5.5.2).

Labels are multi-hot over :func:`~anomalib_genau.taxonomy.type_vocabulary` (``normal`` and
every coarse type). An image with several types, such as VisA's multi-defect images, has
several positive labels, and a prediction naming one of them is a true positive for that
label and a false negative for the others, as the paper's multi-type labels are scored.
"Weighted" averages the per-label scores by each label's support (its positive images), so
labels the target does not have weigh nothing and rare types do not dominate.
"""

from __future__ import annotations

from typing import Any

from anomalib.metrics import AnomalibMetric
from torchmetrics.classification import MultilabelF1Score, MultilabelPrecision, MultilabelRecall

from anomalib_genau.taxonomy import type_vocabulary

TYPE_FIELDS = ("pred_types", "gt_types")


def _weighted(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"fields": TYPE_FIELDS, "num_labels": len(type_vocabulary()), "average": "weighted", **kwargs}


class WeightedPrecision(AnomalibMetric, MultilabelPrecision):
    """Support-weighted precision of the predicted defect types."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**_weighted(kwargs))


class WeightedRecall(AnomalibMetric, MultilabelRecall):
    """Support-weighted recall of the predicted defect types."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**_weighted(kwargs))


class WeightedF1(AnomalibMetric, MultilabelF1Score):
    """Support-weighted F1 of the predicted defect types."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**_weighted(kwargs))
