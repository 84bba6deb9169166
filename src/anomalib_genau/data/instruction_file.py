"""An optional instruction file: JSON lines of image, question and answer, for the reasoning mode.

The generated and public datasets carry masks and defect names but no descriptions, so the
training mix cannot teach explanations. Users who have descriptions write one record per line::

    {"image": "imgs/001.png", "question": "Describe the defect.", "answer": "A dark scratch ...",
     "mask": "masks/001.png", "category": "bottle"}

``image`` and ``mask`` are relative to the file's folder (or absolute). ``mask`` is required
for an anomalous image (the segmentation loss needs it); a normal image says
``"label": "normal"`` instead. ``category`` defaults to ``"object"``. The answer is trained
with ``[SEG_defect] [SEG_normal]`` appended, like every response.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from anomalib.data.datasets.base.image import AnomalibDataset


class InstructionFileError(ValueError):
    """A record of the instruction file is malformed; the message names the file and line."""


def _record(path: Path, number: int, line: str) -> dict[str, object]:
    where = f"{path}, line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        msg = f"{where}: not JSON ({error})."
        raise InstructionFileError(msg) from error
    missing = [key for key in ("image", "question", "answer") if not isinstance(record.get(key), str)]
    if missing:
        msg = f"{where}: missing {', '.join(missing)}."
        raise InstructionFileError(msg)
    normal = str(record.get("label", "")).lower() == "normal"
    if not normal and not record.get("mask"):
        msg = f'{where}: an anomalous image needs a "mask" (or "label": "normal").'
        raise InstructionFileError(msg)
    folder = path.parent
    image = folder / str(record["image"])
    mask = "" if normal else str(folder / str(record["mask"]))
    for file in (image, Path(mask)) if mask else (image,):
        if not file.is_file():
            msg = f"{where}: {file} does not exist."
            raise InstructionFileError(msg)
    return {
        "image_path": str(image),
        "mask_path": mask,
        "label_index": 0 if normal else 1,
        "split": "train",
        "category": str(record.get("category", "object")),
        "question": record["question"],
        "answer": record["answer"],
        "defect_type": "",
    }


def load_instruction_file(path: str | Path) -> dict[str, AnomalibDataset]:
    """Per category, an anomalib dataset of the file's records (with ``question``/``answer`` columns).

    Raises:
        InstructionFileError: A record is malformed or names a missing file.

    """
    path = Path(path)
    records = [
        _record(path, number, line)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if line.strip()
    ]
    if not records:
        msg = f"{path}: no records."
        raise InstructionFileError(msg)
    frame = pd.DataFrame(records)
    datasets = {}
    for category, rows in frame.groupby("category", sort=False):
        dataset = AnomalibDataset()
        samples = rows.drop(columns="category").reset_index(drop=True)
        samples.attrs["task"] = "segmentation"
        dataset.samples = samples
        datasets[str(category)] = dataset
    return datasets
