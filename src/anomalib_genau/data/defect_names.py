"""Original defect names of a sample, read the way each dataset records them.

- MVTec-AD, MPDD and any MVTec-layout or ``Folder`` data: the image's parent folder.
- VisA: the raw dataset's ``<category>/image_anno.csv`` (anomalib's prepared ``visa_pytorch``
  folders keep only good/bad); a label may list several names separated by commas.
- Real-IAD: the defect code in the file name (``audiojack_0012_NG_AK_C1_....jpg``), else the
  code folder (``NG/AK/S0012/...``), translated by :data:`~anomalib_genau.taxonomy.REAL_IAD_CODES`.

Every reader is called as ``reader(image_path, label)`` and returns ``[]`` for normal images.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from anomalib_genau.taxonomy import REAL_IAD_CODES, UnknownDefectError

DefectNameReader = Callable[[str, int], list[str]]


def folder_defect_names(image_path: str, label: int) -> list[str]:
    """The image's parent folder (``test/<defect>/000.png``)."""
    return [] if label == 0 else [Path(image_path).parent.name]


def realiad_defect_names(image_path: str, label: int) -> list[str]:
    """The Real-IAD defect code of the file name (or of its code folder) as a taxonomy name.

    Raises:
        UnknownDefectError: Neither the file name nor the folder holds a known code.

    """
    if label == 0:
        return []
    path = Path(image_path)
    parts = path.stem.split("_")
    candidates = [parts[parts.index("NG") + 1]] if "NG" in parts[:-1] else []
    candidates.append(path.parent.parent.name)
    for code in candidates:
        if code in REAL_IAD_CODES:
            return [REAL_IAD_CODES[code]]
    msg = f"No Real-IAD defect code in {image_path}; known codes: {', '.join(sorted(REAL_IAD_CODES))}."
    raise UnknownDefectError(msg)


class VisaDefectNames:
    """VisA defect labels of one category, from the raw dataset's annotation file.

    Args:
        root: Root of the raw VisA dataset (the folder holding ``split_csv`` and the categories).
        category: VisA category, e.g. ``"candle"``.

    Raises:
        FileNotFoundError: ``<root>/<category>/image_anno.csv`` does not exist.

    """

    def __init__(self, root: str | Path, category: str) -> None:
        self.path = Path(root) / category / "image_anno.csv"
        if not self.path.is_file():
            msg = (
                f"VisA defect types come from the raw dataset's annotation file, which is missing: {self.path}. "
                "Keep the raw VisA folders next to anomalib's visa_pytorch split."
            )
            raise FileNotFoundError(msg)
        with self.path.open(encoding="utf-8", newline="") as file:
            self.labels = {
                Path(row["image"]).name: [name.strip() for name in row["label"].split(",") if name.strip()]
                for row in csv.DictReader(file)
                if row["label"].strip().lower() != "normal"
            }

    def __call__(self, image_path: str, label: int) -> list[str]:
        """The labels of an anomalous image, matched by file name."""
        if label == 0:
            return []
        name = Path(image_path).name
        if name not in self.labels:
            msg = f"Anomalous VisA image {image_path} has no label in {self.path}."
            raise UnknownDefectError(msg)
        return self.labels[name]
