"""The multi-type dialogue: the product-conditioned instruction and the deterministic parser."""

import pytest

from anomalib_genau import prompts
from anomalib_genau.data.dataclasses import type_labels
from anomalib_genau.parsing import parse_defect_types
from anomalib_genau.taxonomy import product_candidates, type_vocabulary

CANDLE = product_candidates("visa", "candle")


def test_instruction_lists_normal_and_the_product_candidates() -> None:
    assert CANDLE == ["color", "contamination", "damaged", "hole", "melded", "weird_wick"]
    text = prompts.type_instruction("candle", CANDLE)
    assert text.endswith(
        "Identify the defect type. Choose exactly one option from this list: "
        "normal, color, contamination, damaged, hole, melded, weird wick."
    )
    with pytest.raises(ValueError, match="No candidate defect types for 'bracket plate'"):
        prompts.type_instruction("bracket plate", [])


@pytest.mark.parametrize(
    ("text", "types", "outcome"),
    [
        ("hole. [SEG_defect] [SEG_normal]", ["hole"], "one"),
        ("Weird wick.", ["weird_wick"], "one"),
        ("weird_wick", ["weird_wick"], "one"),
        ("color, hole.", ["color", "hole"], "several"),
        ("hole and then color", ["hole", "color"], "several"),
        ("normal.", [], "normal"),
        ("No, the candle is normal.", [], "normal"),
        ("I cannot tell.", [], "none"),
        ("holes everywhere", [], "none"),  # whole words only
        ("", [], "none"),
    ],
)
def test_parser_rule(text: str, types: list[str], outcome: str) -> None:
    parsed = parse_defect_types(text, CANDLE)
    assert (parsed.types, parsed.outcome) == (types, outcome)


def test_a_longer_candidate_wins_over_the_word_it_contains() -> None:
    parsed = parse_defect_types("the cut lead is broken", ["cut", "cut_lead", "broken"])
    assert parsed.types == ["cut_lead", "broken"]


def test_labels_are_multi_hot_over_the_vocabulary() -> None:
    vocabulary = type_vocabulary()
    assert vocabulary[0] == "normal"
    normal = type_labels([])
    assert normal.tolist() == [1] + [0] * (len(vocabulary) - 1)
    combined = type_labels(["hole", "color", "not_a_taxonomy_type"])
    assert combined.sum() == 2
    assert combined[vocabulary.index("hole")] == combined[vocabulary.index("color")] == 1


def test_type_answers_round_trip_through_the_parser() -> None:
    for types in (["hole"], ["weird_wick", "color"], []):
        answer = prompts.type_answer(types)
        assert parse_defect_types(answer, CANDLE).types == types


def test_weighted_metrics_weight_each_label_by_its_support() -> None:
    from types import SimpleNamespace

    import torch

    from anomalib_genau.models.genau.metrics import WeightedF1, WeightedPrecision, WeightedRecall

    truth = torch.stack([type_labels(t) for t in [[], ["hole"], ["hole"], ["color", "hole"]]])
    guess = torch.stack([type_labels(t) for t in [[], ["hole"], ["color"], ["color"]]])
    batch = SimpleNamespace(pred_types=guess, gt_types=truth)
    values = {}
    for metric in (WeightedPrecision(), WeightedRecall(), WeightedF1()):
        metric.update(batch)
        values[type(metric).__name__] = float(metric.compute())
    # supports: normal 1, hole 3, color 1. normal P=R=1; hole P=1, R=1/3; color P=1/2, R=1
    assert values["WeightedPrecision"] == pytest.approx((1 + 3 * 1 + 0.5) / 5)
    assert values["WeightedRecall"] == pytest.approx((1 + 3 / 3 + 1) / 5)
    assert values["WeightedF1"] == pytest.approx((1 + 3 * 0.5 + 2 / 3) / 5)
