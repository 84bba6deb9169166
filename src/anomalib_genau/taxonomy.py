"""The paper's defect taxonomy (Tables 6-12): dataset -> product -> original name -> coarse type(s).

Products the taxonomy covers (MVTec-AD, VisA, MPDD, Real-IAD) map their folder or annotation
names through it; a name the taxonomy does not know for such a product is an error that
lists the known names. Any other product (a user's own MVTec-layout or ``Folder`` data)
uses the normalised defect folder name itself as the type.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from importlib.resources import files

import yaml

# The taxonomy's key of each anomalib dataset (by datamodule name, as in ``choices.DATASETS``).
DATASET_KEYS = {"MVTecAD": "mvtec_ad", "MPDD": "mpdd", "Visa": "visa", "RealIAD": "real_iad"}
NORMAL_NAMES = frozenset({"good", "normal", "ok"})
NORMAL_LABEL = "normal"


# Datasets whose mapping the paper's table does not give legibly (see the taxonomy file's header).
PROVISIONAL_DATASETS = frozenset({"mpdd"})

# Real-IAD defect codes (in folder and file names) -> the taxonomy's original defect names.
REAL_IAD_CODES = {
    "AK": "pit",
    "BX": "deformation",
    "CH": "abrasion",
    "HS": "scratch",
    "PS": "damage",
    "QS": "missing_parts",
    "YW": "foreign_objects",
    "ZW": "contamination",
}


class UnknownDefectError(KeyError):
    """A product covered by the taxonomy has a defect name the taxonomy does not list."""

    def __str__(self) -> str:
        return str(self.args[0])


@cache
def load_taxonomy() -> dict[str, dict[str, dict[str, list[str]]]]:
    """Read the packaged taxonomy; every coarse entry becomes a list of type names."""
    text = files("anomalib_genau.resources").joinpath("defect_taxonomy.yaml").read_text()
    raw = yaml.safe_load(text)
    return {
        dataset: {
            product: {
                normalize_name(name): [coarse] if isinstance(coarse, str) else list(coarse)
                for name, coarse in defects.items()
            }
            for product, defects in products.items()
        }
        for dataset, products in raw.items()
    }


def normalize_name(name: str) -> str:
    """Lower-case, spaces and dashes to underscores, ``colour`` to ``color``: ``"Gray Stroke" -> "gray_stroke"``."""
    name = re.sub(r"[\s\-]+", "_", str(name).strip().lower())
    return name.replace("colour", "color")


def product_mapping(dataset: str | None, product: str) -> dict[str, list[str]] | None:
    """The taxonomy's mapping for ``product`` of ``dataset``, or ``None`` when it is not covered."""
    if dataset is None:
        return None
    return load_taxonomy().get(dataset, {}).get(product)


def defect_types(dataset: str | None, product: str, defect_name: str) -> list[str]:
    """Coarse defect type(s) of one original defect name; ``[]`` for a normal name.

    Args:
        dataset: Taxonomy dataset key (``"mvtec_ad"``, ``"visa"``, ``"mpdd"``, ``"real_iad"``) or
            ``None`` for data the taxonomy does not cover.
        product: Product (category) folder name, e.g. ``"carpet"``.
        defect_name: Defect folder or annotation name, e.g. ``"metal_contamination"``.

    Raises:
        UnknownDefectError: ``product`` is in the taxonomy but ``defect_name`` is not.

    """
    name = normalize_name(defect_name)
    if name in NORMAL_NAMES:
        return []
    mapping = product_mapping(dataset, product)
    if mapping is None:
        return [name]
    if name not in mapping:
        msg = (
            f"Defect '{defect_name}' is not in the taxonomy for {dataset}/{product}; "
            f"known names: {', '.join(sorted(mapping))}."
        )
        raise UnknownDefectError(msg)
    return list(mapping[name])


def object_name(product: str) -> str:
    """Object name used in prompts: the product folder name in words (``"metal_nut" -> "metal nut"``)."""
    return re.sub(r"[_\-]+", " ", product).strip() or "object"


def sample_defect_types(dataset: str | None, product: str, defect_names: Iterable[str]) -> list[str]:
    """Coarse types of a sample with one or more original defect names, in first-seen order.

    VisA images can carry several labels ("chunk of wax missing,different color spot"); their
    coarse types are united, so the sample is multi-label as in the paper.
    """
    types: list[str] = []
    for name in defect_names:
        types.extend(t for t in defect_types(dataset, product, name) if t not in types)
    return types


def product_candidates(dataset: str | None, product: str) -> list[str] | None:
    """The product's candidate coarse types (sorted, unique), or ``None`` when the taxonomy lacks it."""
    mapping = product_mapping(dataset, product)
    if mapping is None:
        return None
    return sorted({coarse for types in mapping.values() for coarse in types})


@cache
def type_vocabulary() -> tuple[str, ...]:
    """Labels of the multi-type metric: ``"normal"`` first, then every coarse type of the taxonomy, sorted.

    One fixed vocabulary for every target: weighted precision, recall and F1 weight each label
    by its support, so labels a target does not have change nothing, and predictions are
    limited to each product's candidates, which belong to its target's vocabulary.
    """
    types = {
        coarse for products in load_taxonomy().values() for m in products.values() for t in m.values() for coarse in t
    }
    return (NORMAL_LABEL, *sorted(types))
