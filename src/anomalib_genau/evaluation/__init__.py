"""Held-out evaluation on generated data: metrics per difficulty part and a training-free reference."""

from anomalib_genau.evaluation.parts import (
    PART_METRICS,
    ImageRecord,
    TestRecorder,
    part_metrics,
    records_from_batches,
)
from anomalib_genau.evaluation.reference import NearestNeighbourPatches, reference_records

__all__ = [
    "PART_METRICS",
    "ImageRecord",
    "NearestNeighbourPatches",
    "TestRecorder",
    "part_metrics",
    "records_from_batches",
    "reference_records",
]
