"""The questions GenAU answers about each batch at validation, test and predict time.

The binary inspection question always (scores, maps, the answer as ``explanation``); the
product-conditioned multi-type question where the batch carries candidate types; the free-form
reasoning questions when configured. All share one vision pass per image.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from anomalib.data import Batch

from anomalib_genau.data.dataclasses import type_labels

from .torch_model import TYPE_MODES, GenAUModel
from .vision import VisionFeatures


class BatchQuestions:
    """Ask a batch GenAU's questions and return the batch fields of the answers.

    Args:
        defect_type_mode: ``"generate"``, ``"likelihood"`` or ``None`` (the type is not asked).
        reasoning_questions: Free-form questions whose answers are appended to ``explanation``.
        max_reasoning_tokens: Decoding budget of a reasoning answer, segmentation tokens included.

    Raises:
        ValueError: An unknown ``defect_type_mode``.

    """

    def __init__(
        self, defect_type_mode: str | None, reasoning_questions: Sequence[str], max_reasoning_tokens: int
    ) -> None:
        self.defect_type_mode = defect_type_mode
        self.reasoning_questions = list(reasoning_questions)
        self.max_reasoning_tokens = max_reasoning_tokens
        # how the multi-type answers of the current test epoch were parsed
        self.type_outcomes: Counter[str] = Counter()

    @property
    def defect_type_mode(self) -> str | None:
        """How the type question is answered: ``"generate"``, ``"likelihood"`` or ``None`` (not asked)."""
        return self._defect_type_mode

    @defect_type_mode.setter
    def defect_type_mode(self, mode: str | None) -> None:
        if mode is not None and mode not in TYPE_MODES:
            msg = f"defect_type_mode must be 'generate', 'likelihood' or None, got {mode!r}."
            raise ValueError(msg)
        self._defect_type_mode = mode

    def outcome_counts(self) -> dict[str, float]:
        """Metric name -> how many multi-type answers this test epoch named no candidate or several."""
        names = {"none": "type_answers_naming_no_candidate", "several": "type_answers_naming_several"}
        if not self.type_outcomes:
            return {}
        return {name: float(self.type_outcomes[outcome]) for outcome, name in names.items()}

    def answer(self, model: GenAUModel, batch: Batch) -> dict[str, Any]:
        """``pred_score``, ``anomaly_map`` and ``explanation``; ``pred_types`` and ``pred_defect_type`` when asked.

        ``batch.image`` is ``(B, 3, H, W)``, pre-processed; its instructions and candidate types
        come with it.
        """
        inspection = model.inspect(batch.image, getattr(batch, "instruction", None))
        fields = {**inspection.batch._asdict(), "explanation": inspection.answers}
        if self.defect_type_mode is not None and getattr(batch, "type_candidates", None) is not None:
            fields.update(self.types(model, inspection.vision, batch))
        for question in self.reasoning_questions:
            replies = model.ask(inspection.vision, [question] * len(batch.image), self.max_reasoning_tokens).texts
            fields["explanation"] = [
                f"{answer} {question} {reply}" for answer, reply in zip(fields["explanation"], replies, strict=True)
            ]
        return fields

    def types(self, model: GenAUModel, vision: VisionFeatures, batch: Batch) -> dict[str, Any]:
        """``pred_types`` (multi-hot) and ``pred_defect_type`` (lists of names) from the multi-type question.

        Raises:
            ValueError: An image's category has no candidate type.

        """
        for category, names in zip(
            batch.category or [""] * len(vision.image_sizes), batch.type_candidates, strict=True
        ):
            if not names:
                msg = f"No candidate defect types for category '{category}': set defect_type_mode=None for it."
                raise ValueError(msg)
        prediction = model.predict_types(vision, batch.type_instruction, batch.type_candidates, self.defect_type_mode)
        self.type_outcomes.update(prediction.outcomes)
        return {
            "pred_types": torch.stack([type_labels(types) for types in prediction.types]).to(model.device),
            "pred_defect_type": prediction.types,
        }
