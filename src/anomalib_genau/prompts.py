"""Instructions and responses of GenAU's binary inspection dialogue (paper 4.6, Appendix C).

Every response ends with the two segmentation tokens, whose final-layer hidden states are
the anchors of the readout. Defect answers start with ``"Yes"`` and normal answers with
``"No"``, so the decoder's first answer token carries its normal/defect decision.
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
    """The full training response: ``"{answer} [SEG_defect] [SEG_normal]"``."""
    return f"{answer(object_name, defect_types)} {SEG_DEFECT} {SEG_NORMAL}"
