"""Instructions and responses of GenAU's dialogues (paper 4.4, 4.6, Appendix C and E).

Three kinds of instruction share one response format, ending with the two segmentation
tokens, whose final-layer hidden states are the anchors of the readout:

- binary inspection: "Is there any anomaly on the {object}? If yes, segment it." Defect answers
  start with ``"Yes"`` and normal ones with ``"No"``, so the decoder's first answer token carries
  its normal/defect decision;
- multi-type detection, conditioned on the product's candidate types: "Identify the defect
  type. Choose exactly one option from this list: normal, color, hole." answered by the option;
- reasoning: a free-form question ("Describe the defect.") answered in free text.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

SEG_DEFECT = "[SEG_defect]"
SEG_NORMAL = "[SEG_normal]"
SEG_TOKENS = (SEG_DEFECT, SEG_NORMAL)

PROMPT_TEMPLATES = (
    "Is there any anomaly on the {object}? If yes, segment it.",
    "Does the {object} have a defect? If so, segment it.",
    "Inspect the {object} for anomalies and segment any you find.",
    "Is anything wrong with the {object}? If yes, please segment the defect.",
    "Check whether the {object} is defective. If it is, segment the anomaly.",
)
NORMAL_RESPONSES = ("No, the {object} is normal.",)
DEFECT_RESPONSE = "Yes, {types}."
# The answer word of a synthetic anomaly ("Yes, anomaly."): it names no taxonomy type.
SYNTHETIC_ANSWER = "anomaly"


def instruction(object_name: str, rng: random.Random | None = None) -> str:
    """The binary inspection instruction: a random paraphrase with ``rng``, else the canonical one."""
    template = rng.choice(PROMPT_TEMPLATES) if rng is not None else PROMPT_TEMPLATES[0]
    return template.format(object=object_name)


def answer(object_name: str, defect_types: Sequence[str]) -> str:
    """The response text before the segmentation tokens: defect types, or a statement of normality."""
    if not defect_types:
        return NORMAL_RESPONSES[0].format(object=object_name)
    return DEFECT_RESPONSE.format(types=" and ".join(t.replace("_", " ") for t in defect_types))


def response(object_name: str, defect_types: Sequence[str]) -> str:
    """The full binary training response: ``"{answer} [SEG_defect] [SEG_normal]"``."""
    return with_segmentation_tokens(answer(object_name, defect_types))


TYPE_TEMPLATE = (
    "The image shows a {object}. Identify the defect type. Choose exactly one option from this list: {options}."
)


def type_options(candidates: Sequence[str]) -> list[str]:
    """The options of the multi-type instruction: ``"normal"`` then the candidates, in words."""
    return ["normal", *(candidate.replace("_", " ") for candidate in candidates)]


def type_instruction(object_name: str, candidates: Sequence[str]) -> str:
    """The product-conditioned multi-type instruction (paper 4.6).

    Raises:
        ValueError: ``candidates`` is empty (the product has no defect type to choose from).

    """
    if not candidates:
        msg = f"No candidate defect types for '{object_name}': the multi-type instruction needs at least one."
        raise ValueError(msg)
    return TYPE_TEMPLATE.format(object=object_name, options=", ".join(type_options(candidates)))


def type_answer(defect_types: Sequence[str]) -> str:
    """The option(s) a multi-type answer names: ``"normal."`` or ``"hole."`` (``"bent, broken."``)."""
    return ", ".join(t.replace("_", " ") for t in defect_types) + "." if defect_types else "normal."


def with_segmentation_tokens(answer_text: str) -> str:
    """``"{answer} [SEG_defect] [SEG_normal]"``: every response ends with both tokens."""
    return f"{answer_text} {SEG_DEFECT} {SEG_NORMAL}"
