"""Synthetic datasets in the MPDD, VisA and Real-IAD layouts, drawn as :mod:`.synthetic` draws MVTec-AD's.

Each layout writes its own folder structure and metadata (VisA's ``image_anno.csv`` and split
file, Real-IAD's JSON), so anomalib's datamodule of that dataset reads it; category and defect
names follow each dataset, so the paper's taxonomy maps them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from PIL import Image

from anomalib_genau.taxonomy import REAL_IAD_CODES

from .synthetic import Counts, DifficultyLog, Painter, generate_mvtec_dataset, write_csv

# Generated categories per layout: category -> original defect names as each dataset records
# them (MVTec-AD/MPDD folders, VisA annotation labels, Real-IAD codes), all in the taxonomy.
MPDD_CATEGORIES: Mapping[str, Sequence[str]] = {
    "bracket_black": ("hole", "scratches"),
    "metal_plate": ("major_rust", "scratches"),
}
VISA_CATEGORIES: Mapping[str, Sequence[str]] = {
    "candle": ("chunk of wax missing", "different color spot", "extra wax in candle"),
    "pcb1": ("bent", "melt", "scratch"),
}
REAL_IAD_CATEGORIES: Mapping[str, Sequence[str]] = {
    "audiojack": ("HS", "ZW", "QS"),
    "bottle_cap": ("AK", "HS", "ZW"),
}


def generate_mpdd_dataset(
    root: str | Path, categories: Mapping[str, Sequence[str]] = MPDD_CATEGORIES, seed: int = 0, **counts: float
) -> Path:
    """Write an MPDD-layout dataset (MVTec-AD's layout, MPDD's categories and defect folders)."""
    return generate_mvtec_dataset(root, categories, seed=seed, taxonomy_key="mpdd", **counts)


def generate_visa_dataset(
    root: str | Path, categories: Mapping[str, Sequence[str]] = VISA_CATEGORIES, seed: int = 0, **counts: float
) -> Path:
    """Write a raw VisA-layout dataset, as anomalib's ``Visa`` datamodule expects before its split.

    Layout::

        split_csv/1cls.csv                         object,split,label,image,mask
        <category>/image_anno.csv                  image,label,mask (labels are free text)
        <category>/Data/Images/Normal/0000.JPG
        <category>/Data/Images/Anomaly/000.JPG
        <category>/Data/Masks/Anomaly/000.png

    Every category also gets one image with two defects, labelled ``"<first>,<second>"``.
    """
    root, sizes = Path(root), Counts(**counts)
    log, split_rows = DifficultyLog(root), []
    for category_index, (category, defects) in enumerate(categories.items()):
        painter = Painter("visa", category, seed, category_index, sizes.image_size)
        images, masks = root / category / "Data" / "Images", root / category / "Data" / "Masks" / "Anomaly"
        for folder in (images / "Normal", images / "Anomaly", masks):
            folder.mkdir(parents=True, exist_ok=True)
        annotation_rows = []
        for index in range(sizes.n_train + sizes.n_test_good):
            image_path = f"{category}/Data/Images/Normal/{index:04d}.JPG"
            Image.fromarray(painter.normal()).save(root / image_path, quality=95)
            split = "train" if index < sizes.n_train else "test"
            split_rows.append([category, split, "normal", image_path, ""])
            annotation_rows.append([image_path, "normal", ""])
        labels = [[name] for name in defects for _ in range(sizes.n_test_per_defect)]
        labels.append(list(defects[:2]))
        for index, names in enumerate(labels):
            image_path = f"{category}/Data/Images/Anomaly/{index:03d}.JPG"
            mask_path = f"{category}/Data/Masks/Anomaly/{index:03d}.png"
            image, mask = painter.defective(names, sizes.subtle(index))
            Image.fromarray(image).save(root / image_path, quality=95)
            Image.fromarray(mask).save(root / mask_path)
            log.add(root / image_path, sizes.subtle(index))
            split_rows.append([category, "test", "anomaly", image_path, mask_path])
            annotation_rows.append([image_path, ",".join(names), mask_path])
        write_csv(root / category / "image_anno.csv", ["image", "label", "mask"], annotation_rows)
    write_csv(root / "split_csv" / "1cls.csv", ["object", "split", "label", "image", "mask"], split_rows)
    log.write()
    return root


def generate_realiad_dataset(
    root: str | Path,
    categories: Mapping[str, Sequence[str]] = REAL_IAD_CATEGORIES,
    seed: int = 0,
    resolution: str = "256",
    **counts: float,
) -> Path:
    """Write a Real-IAD-layout dataset with single-view metadata, as anomalib's ``RealIAD`` reads it.

    Layout (``categories`` maps each category to Real-IAD defect codes such as ``"AK"``)::

        realiad_<resolution>/<category>/OK/S0001/<category>_0001_OK_C1_20240101000000.jpg
        realiad_<resolution>/<category>/NG/<code>/S0009/<category>_0009_NG_<code>_C1_20240101000000.jpg
        realiad_<resolution>/<category>/NG/<code>/S0009/<category>_0009_NG_<code>_C1_20240101000000_mask.png
        realiad_jsons/realiad_jsons_sv/<category>.json   {"meta", "train", "test"}

    The images are ``image_size`` pixels whatever ``resolution`` says (it only names the folder).
    """
    root, sizes = Path(root), Counts(**counts)
    log = DifficultyLog(root)
    for category_index, (category, codes) in enumerate(categories.items()):
        painter = Painter("real_iad", category, seed, category_index, sizes.image_size)
        folder = root / f"realiad_{resolution}" / category
        metadata: dict[str, object] = {"meta": {"prefix": "", "normal_class": "OK"}, "train": [], "test": []}
        kinds = ["OK"] * (sizes.n_train + sizes.n_test_good) + [
            code for code in codes for _ in range(sizes.n_test_per_defect)
        ]
        for number, kind in enumerate(kinds, start=1):
            stem = f"{category}_{number:04d}_{'OK' if kind == 'OK' else 'NG_' + kind}_C1_20240101000000"
            relative = Path("OK" if kind == "OK" else f"NG/{kind}") / f"S{number:04d}"
            (folder / relative).mkdir(parents=True, exist_ok=True)
            record = {"category": category, "anomaly_class": kind, "image_path": f"{relative}/{stem}.jpg"}
            if kind == "OK":
                Image.fromarray(painter.normal()).save(folder / relative / f"{stem}.jpg", quality=95)
                record["mask_path"] = None
            else:
                subtle = sizes.subtle(number)
                image, mask = painter.defective([REAL_IAD_CODES[kind]], subtle)
                Image.fromarray(image).save(folder / relative / f"{stem}.jpg", quality=95)
                log.add(folder / relative / f"{stem}.jpg", subtle)
                Image.fromarray(mask).save(folder / relative / f"{stem}_mask.png")
                record["mask_path"] = f"{relative}/{stem}_mask.png"
            metadata["train" if number <= sizes.n_train else "test"].append(record)
        json_path = root / "realiad_jsons" / "realiad_jsons_sv" / f"{category}.json"
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(metadata, indent=1))
    log.write()
    return root


LAYOUT_GENERATORS: Mapping[str, Callable[..., Path]] = {
    "MVTecAD": generate_mvtec_dataset,
    "MPDD": generate_mpdd_dataset,
    "Visa": generate_visa_dataset,
    "RealIAD": generate_realiad_dataset,
}
