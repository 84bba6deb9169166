"""The dialogue codec: questions into decoder inputs, answers back into fields.

One implementation serves the torch model, the OpenVINO inferencer and the datamodule's
training targets, so the two inference paths cannot drift apart: chat rendering, prompts
with their image tokens, training responses, the special token ids, the yes/no log-odds of
the first answer token, answer texts and the defect types they name. The wording of the
questions and answers is in :mod:`anomalib_genau.prompts`, the parsing rule in
:mod:`anomalib_genau.parsing`. Imports torch but neither transformers nor anomalib.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from anomalib_genau import prompts
from anomalib_genau.parsing import ParsedTypes, parse_defect_types

END_OF_TURN = "<|im_end|>"


class TokenPair(NamedTuple):
    """A normal/defect pair, in this order everywhere: token ids, anchor rows, map channels."""

    normal: int
    defect: int


class Prompts(NamedTuple):
    """``input_ids`` and ``attention_mask``, both ``(B, L)``, left-padded."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor


class DialogueCodec:
    """GenAU's dialogue on one LLaVA-OneVision processor whose tokenizer holds the segmentation tokens.

    Args:
        processor: A LLaVA-OneVision processor (chat template, tokenizer, image token).
        default_object: Object named by the canonical prompt when a batch carries no instruction.

    Raises:
        ValueError: The tokenizer lacks the segmentation tokens, or normal and defect answers
            start with the same token (the log-odds would always be 0).

    """

    def __init__(self, processor: Any, default_object: str = "object") -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.default_object = default_object
        self.image_token = processor.image_token
        self.image_token_id = int(processor.image_token_id)
        vocabulary = self.tokenizer.get_vocab()
        missing = [token for token in prompts.SEG_TOKENS if token not in vocabulary]
        if missing:
            msg = f"The tokenizer has no {', '.join(missing)}: add them with models.genau.vlm.add_segmentation_tokens."
            raise ValueError(msg)
        self.seg_ids = TokenPair(normal=vocabulary[prompts.SEG_NORMAL], defect=vocabulary[prompts.SEG_DEFECT])
        self.answer_ids = TokenPair(
            normal=self._first_token(prompts.answer(default_object, [])),
            defect=self._first_token(prompts.answer(default_object, ["x"])),
        )
        if self.answer_ids.normal == self.answer_ids.defect:
            msg = "Normal and defect answers start with the same token; the decoder log-odds would be 0."
            raise ValueError(msg)
        tokenizer = self.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.banned_ids = [i for i in tokenizer.all_special_ids if i not in self.seg_ids]
        self.end_of_turn_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)

    def _first_token(self, text: str) -> int:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"][0]

    def instructions(self, instructions: Sequence[str] | None, count: int) -> list[str]:
        """One instruction per image: the given ones, or the canonical prompt on ``default_object``.

        Raises:
            ValueError: ``instructions`` does not hold one per image.

        """
        if instructions is None:
            return [prompts.instruction(self.default_object)] * count
        if len(instructions) != count:
            msg = f"Got {len(instructions)} instructions for {count} images."
            raise ValueError(msg)
        return list(instructions)

    def chat(self, instruction: str, image_tokens: int = 1) -> str:
        """The user turn (one image, then the instruction) and the assistant's opening.

        ``image_tokens`` repeats the image token as the processor expands it for an image
        whose features are that many tokens long.
        """
        text = self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        return text.replace(self.image_token, self.image_token * image_tokens, 1)

    def prompts(self, instructions: Sequence[str], image_tokens: Sequence[int]) -> Prompts:
        """Tokenized prompts whose image tokens hold each image's ``image_tokens`` features.

        Only the text is encoded: the image went through the processor and the tower once,
        however many questions it is asked.
        """
        chats = [self.chat(text, count) for text, count in zip(instructions, image_tokens, strict=True)]
        encoded = self.tokenizer(chats, padding=True, padding_side="left", return_tensors="pt")
        return Prompts(encoded["input_ids"], encoded["attention_mask"])

    def response_ids(self, response: str) -> list[int]:
        """Token ids of one training response, closed with the end-of-turn token.

        Raises:
            ValueError: The response does not end with ``[SEG_defect] [SEG_normal]``.

        """
        ids = self.tokenizer(response, add_special_tokens=False)["input_ids"]
        if ids[-2:] != [self.seg_ids.defect, self.seg_ids.normal]:
            msg = f"Response {response!r} must end with '[SEG_defect] [SEG_normal]' (GenAU reads its anchors there)."
            raise ValueError(msg)
        return [*ids, self.end_of_turn_id]

    def log_odds(self, first_logits: torch.Tensor) -> torch.Tensor:
        """``(B,)`` log-odds of a defect answer against a normal one, from the ``(B, V)`` first-answer logits."""
        log_probs = first_logits.float().log_softmax(dim=-1)
        return log_probs[:, self.answer_ids.defect] - log_probs[:, self.answer_ids.normal]

    def texts(self, answer_tokens: Sequence[Sequence[int]]) -> list[str]:
        """Answer texts of generated ids (the segmentation tokens already cut off)."""
        return [text.strip() for text in self.tokenizer.batch_decode(answer_tokens, skip_special_tokens=True)]

    @staticmethod
    def defect_types(answer: str, candidates: Sequence[str]) -> ParsedTypes:
        """The candidate types a multi-type answer names (the paper's deterministic parser)."""
        return parse_defect_types(answer, candidates)

    def answer_drafts(self, object_name: str, candidates: Sequence[str] | None) -> list[list[int]]:
        """The binary question's trained responses as ids, each ending with ``[SEG_defect] [SEG_normal]``.

        ``"No, the {object} is normal."``, ``"Yes, anomaly."`` (one-class training's synthetic
        anomalies) and ``"Yes, {type}."`` for each candidate: the answers of a decoder that learned
        the response format, which one decoder pass can check all at once (``drafted_decode``).
        """
        answers = [[], [prompts.SYNTHETIC_ANSWER], *([name] for name in candidates or ())]
        return self._ids_once([prompts.response(object_name, types) for types in answers])

    def type_drafts(self, candidates: Sequence[str]) -> list[list[int]]:
        """The type question's trained responses as ids (``"normal."``, ``"hole."``... and the segmentation pair)."""
        options = self.type_options(candidates)
        return self._ids_once([prompts.with_segmentation_tokens(prompts.type_answer(types)) for types in options])

    def _ids_once(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each distinct text, in order."""
        return [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in dict.fromkeys(texts)]

    @staticmethod
    def type_options(candidates: Sequence[str]) -> list[list[str]]:
        """The answers of the likelihood type mode: normal (``[]``), then each candidate alone."""
        return [[], *([name] for name in candidates)]

    def option_ids(self, options: Sequence[Sequence[str]]) -> list[list[int]]:
        """Token ids of each option's multi-type answer (``"normal."``, ``"hole."``)."""
        return [self.tokenizer(prompts.type_answer(types), add_special_tokens=False)["input_ids"] for types in options]


def check_context(prompt_length: int, max_new_tokens: int, context: int) -> None:
    """Refuse a prompt (question and image tokens) that leaves no room for its answer in the context.

    Raises:
        ValueError: ``prompt_length + max_new_tokens`` exceeds ``context``, with the three numbers.

    """
    if prompt_length + max_new_tokens > context:
        msg = (
            f"The question is too long: with the image it takes {prompt_length} tokens, plus "
            f"{max_new_tokens} for the answer, and the model's context holds {context}."
        )
        raise ValueError(msg)
