"""The anomalib datasets of the cross-dataset protocol: their categories on disk, datamodules and defect names.

Each dataset is read by anomalib's own datamodule (one instance per category); this module
only knows where each layout keeps its categories and its defect names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anomalib.data
from anomalib.data import AnomalibDataModule

from anomalib_genau.taxonomy import DATASET_KEYS

from .defect_names import DefectNameReader, VisaDefectNames, folder_defect_names, realiad_defect_names


def _mvtec_layout_categories(root: Path, _options: Mapping[str, Any]) -> list[str]:
    """Folders with a ``test`` split (MVTec-AD, MPDD)."""
    return sorted(path.name for path in root.iterdir() if (path / "test").is_dir())


def _check_mvtec_layout_masks(datamodule: AnomalibDataModule) -> None:
    """Every anomalous test image needs ``ground_truth/<defect>/<stem>[_mask].*``.

    anomalib's MVTec-layout loaders fail inside pandas when a mask is missing; this names the images.

    Raises:
        FileNotFoundError: Some anomalous images have no mask file.

    """
    folder = Path(datamodule.root) / datamodule.category
    missing = []
    for image in sorted((folder / "test").glob("*/*")):
        defect = image.parent.name
        if defect == "good" or not image.is_file():
            continue
        masks = folder / "ground_truth" / defect
        if not any(masks.glob(f"{image.stem}.*")) and not any(masks.glob(f"{image.stem}_mask.*")):
            missing.append(str(image))
    if missing:
        msg = (
            f"{len(missing)} anomalous image(s) in {folder} have no mask in ground_truth/<defect>/ "
            f"(<name>_mask.png or <name>.png): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
        raise FileNotFoundError(msg)


def _visa_categories(root: Path, _options: Mapping[str, Any]) -> list[str]:
    """Raw VisA category folders (``<category>/Data``; the defect types come from their ``image_anno.csv``)."""
    return sorted(path.parent.name for path in root.glob("*/Data") if path.is_dir())


def _realiad_categories(root: Path, options: Mapping[str, Any]) -> list[str]:
    """Categories whose metadata JSON exists under the configured ``json_path``."""
    return sorted(path.stem for path in root.glob(str(options["json_path"]).format(category="*")))


@dataclass(frozen=True)
class DatasetSource:
    """One anomalib dataset as the cross-dataset protocol sees it.

    Args:
        datamodule: Class name in ``anomalib.data``.
        taxonomy_key: Key of the dataset in the defect taxonomy.
        categories: ``(root, options) -> categories`` present on disk.
        defect_names: ``datamodule -> reader`` of the original defect names of its samples.
        default_options: Keyword arguments of the datamodule that the protocol fixes by default.
        check_masks: Raises a clear error before anomalib's loader would fail on a missing mask;
            ``None`` where anomalib reads a missing mask as an empty path (then the sample is
            left out and counted, see :class:`~anomalib_genau.data.instruction_dataset.CategoryData`).

    """

    datamodule: str
    taxonomy_key: str
    categories: Callable[[Path, Mapping[str, Any]], list[str]]
    defect_names: Callable[[AnomalibDataModule], DefectNameReader]
    default_options: Mapping[str, Any] = field(default_factory=dict)
    check_masks: Callable[[AnomalibDataModule], None] | None = None

    def build(self, root: Path, category: str, options: Mapping[str, Any]) -> AnomalibDataModule:
        """The anomalib datamodule of one category."""
        datamodule_class = getattr(anomalib.data, self.datamodule)
        return datamodule_class(root=root, category=category, **options)


DATASET_SOURCES: Mapping[str, DatasetSource] = {
    "MVTecAD": DatasetSource(
        "MVTecAD",
        DATASET_KEYS["MVTecAD"],
        _mvtec_layout_categories,
        lambda _: folder_defect_names,
        check_masks=_check_mvtec_layout_masks,
    ),
    "MPDD": DatasetSource(
        "MPDD",
        DATASET_KEYS["MPDD"],
        _mvtec_layout_categories,
        lambda _: folder_defect_names,
        check_masks=_check_mvtec_layout_masks,
    ),
    "Visa": DatasetSource(
        "Visa",
        DATASET_KEYS["Visa"],
        _visa_categories,
        lambda datamodule: VisaDefectNames(datamodule.root, datamodule.category),
    ),
    # Single-view metadata: the paper evaluates Real-IAD single-view.
    "RealIAD": DatasetSource(
        "RealIAD",
        DATASET_KEYS["RealIAD"],
        _realiad_categories,
        lambda _: realiad_defect_names,
        {"json_path": "realiad_jsons/realiad_jsons_sv/{category}.json"},
    ),
}


def dataset_source(name: str) -> DatasetSource:
    """The :class:`DatasetSource` called ``name``.

    Raises:
        ValueError: ``name`` is not one of the supported datasets.

    """
    if name not in DATASET_SOURCES:
        msg = f"Unknown dataset '{name}'; supported: {', '.join(DATASET_SOURCES)}."
        raise ValueError(msg)
    return DATASET_SOURCES[name]


def resolve_categories(
    source: DatasetSource, root: Path, requested: list[str] | None, options: Mapping[str, Any]
) -> list[str]:
    """The requested categories, or all found on disk.

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no category of this dataset.
        ValueError: A requested category is not on disk; the message lists the available ones.

    """
    if not root.is_dir():
        msg = f"{source.datamodule} root {root} does not exist."
        raise FileNotFoundError(msg)
    available = source.categories(root, options)
    if not available:
        msg = f"No {source.datamodule} category found under {root}."
        raise FileNotFoundError(msg)
    if requested is None:
        return available
    missing = [category for category in requested if category not in available]
    if missing:
        msg = (
            f"{source.datamodule} under {root} has no category {', '.join(missing)}; available: {', '.join(available)}."
        )
        raise ValueError(msg)
    return list(requested)
