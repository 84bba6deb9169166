"""The deterministic parser of multi-type answers (paper 4.4): response text -> defect-type labels.

Rule, applied to the answer without its segmentation tokens, lower-cased, with ``_`` read as
a space:

1. every candidate type named as whole words is a predicted type, in order of appearance
   (``"several"`` when more than one: all are kept, so the label can be multi-type, as VisA's
   multi-defect images are);
2. otherwise, an answer that names ``normal`` is normal (``"normal"``);
3. otherwise no candidate is named: the image is predicted normal and the case is counted as
   ``"none"``.

A candidate that is a word sequence inside a longer candidate ("cut" in "cut lead") counts
only where the longer one does not match.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from anomalib_genau.prompts import SEG_TOKENS

ParseOutcome = Literal["one", "several", "normal", "none"]


@dataclass(frozen=True)
class ParsedTypes:
    """Predicted defect types (``[]`` for normal) and which rule decided."""

    types: list[str]
    outcome: ParseOutcome


def _pattern(name: str) -> re.Pattern[str]:
    words = name.replace("_", " ").split()
    return re.compile(r"\b" + r"\s+".join(map(re.escape, words)) + r"\b")


def parse_defect_types(text: str, candidates: Sequence[str]) -> ParsedTypes:
    """Map a multi-type answer onto ``candidates`` (taxonomy names such as ``"weird_wick"``)."""
    for token in SEG_TOKENS:
        text = text.replace(token, " ")
    text = text.lower().replace("_", " ")
    found: list[tuple[int, str]] = []
    taken: list[tuple[int, int]] = []
    for name in sorted(set(candidates), key=lambda n: -len(n)):  # longest first
        for match in _pattern(name).finditer(text):
            span = match.span()
            if not any(start < span[1] and span[0] < end for start, end in taken):
                taken.append(span)
                found.append((span[0], name))
    types = [name for _, name in sorted(found)]
    types = list(dict.fromkeys(types))
    if types:
        return ParsedTypes(types, "one" if len(types) == 1 else "several")
    if _pattern("normal").search(text):
        return ParsedTypes([], "normal")
    return ParsedTypes([], "none")
