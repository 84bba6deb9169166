"""Defect-type mapping through the paper's taxonomy, object names and the dialogue format."""

import random

import pytest

from anomalib_genau import prompts
from anomalib_genau.taxonomy import UnknownDefectError, defect_types, load_taxonomy, normalize_name, object_name


def test_taxonomy_covers_the_four_datasets() -> None:
    taxonomy = load_taxonomy()
    assert set(taxonomy) == {"mvtec_ad", "visa", "mpdd", "real_iad"}
    assert len(taxonomy["mvtec_ad"]) == 15


@pytest.mark.parametrize(
    ("dataset", "product", "name", "expected"),
    [
        ("mvtec_ad", "carpet", "cut", ["tear"]),
        ("mvtec_ad", "carpet", "metal_contamination", ["contamination"]),
        ("mvtec_ad", "screw", "manipulated_front", ["bent", "broken"]),
        ("mvtec_ad", "bottle", "good", []),
        ("visa", "candle", "Different colour spot", ["color"]),
        ("real_iad", "toothbrush", "abrasion", ["deformed"]),
        (None, "my_part", "Scuff Mark", ["scuff_mark"]),
        ("mvtec_ad", "my_part", "scuff", ["scuff"]),
    ],
)
def test_defect_types(dataset: str | None, product: str, name: str, expected: list[str]) -> None:
    assert defect_types(dataset, product, name) == expected


def test_unknown_defect_of_a_covered_product_lists_the_known_names() -> None:
    with pytest.raises(UnknownDefectError, match=r"known names: color, cut, hole, metal_contamination, thread"):
        defect_types("mvtec_ad", "carpet", "scuff")


def test_names() -> None:
    assert normalize_name("Gray  Stroke") == "gray_stroke"
    assert object_name("metal_nut") == "metal nut"
    assert object_name("___") == "object"


def test_dialogue_format() -> None:
    assert prompts.instruction("carpet") == "Is there any anomaly on the carpet? If yes, segment it."
    paraphrases = {prompts.instruction("carpet", random.Random(seed)) for seed in range(40)}
    assert len(paraphrases) == len(prompts.PROMPT_TEMPLATES)
    assert all("carpet" in text for text in paraphrases)
    assert prompts.response("carpet", ["bent", "broken"]) == "Yes, bent and broken. [SEG_defect] [SEG_normal]"
    assert prompts.response("carpet", []) == "No, the carpet is normal. [SEG_defect] [SEG_normal]"
    # the first answer word carries the decision
    assert prompts.answer("x", ["hole"]).split(",")[0] == "Yes"
    assert prompts.answer("x", []).split(",")[0] == "No"
