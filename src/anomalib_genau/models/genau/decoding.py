"""Greedy KV-cached decoding that always ends an answer with ``[SEG_defect] [SEG_normal]``.

transformers' ``generate`` never computes the hidden state of the last token it emits and
stores every layer's state for every step; GenAU needs exactly the last layer's state of
the two segmentation tokens, the last of which is the final token. So this module runs the
model's own forward with its KV cache: prefill once, decode greedily, and each step that
feeds tokens returns their final-layer states. ``[SEG_normal]`` always follows
``[SEG_defect]``, so once every open answer of the batch emits ``[SEG_defect]`` the two go
through the decoder in one step, which reads both anchors (one decoder pass fewer than
feeding them one by one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import LlavaOnevisionForConditionalGeneration

from .vlm import merged_token_rows


@dataclass
class DecodeResult:
    """Output of :func:`decode_with_anchors`.

    Attributes:
        tokens: ``(B, T)`` generated ids, padded with ``pad_id`` after ``[SEG_normal]``.
        anchors: ``(B, 2, D)`` final-layer states of ``[SEG_normal]`` (row 0) and ``[SEG_defect]`` (row 1).
        answer_tokens: Per image, the generated ids before ``[SEG_defect]``.
        forced: ``(B,)`` bool, True where the tokens had to be appended (budget ran out).
        first_logits: ``(B, V)`` logits at the first answer position (the prefill's last).

    """

    tokens: torch.Tensor
    anchors: torch.Tensor
    answer_tokens: list[list[int]]
    forced: torch.Tensor
    first_logits: torch.Tensor


def next_tokens(
    logits: torch.Tensor,
    step: int,
    max_new_tokens: int,
    seg_defect_id: int,
    seg_normal_id: int,
    banned_ids: Sequence[int],
    emitted_defect: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy choice under the response format ``answer [SEG_defect] [SEG_normal]``.

    The answer may not end the turn (``banned_ids``, e.g. ``<|im_end|>``) nor emit
    ``[SEG_normal]`` before ``[SEG_defect]``; ``[SEG_normal]`` follows ``[SEG_defect]``
    at once; if ``[SEG_defect]`` has not come two steps before the budget ends, it is
    appended (forced), so every image gets both anchors.

    Args:
        logits: ``(B, V)`` next-token logits.
        step: Index of the token being chosen, from 0.
        max_new_tokens: Decoding budget (at least 2).
        seg_defect_id: Id of ``[SEG_defect]``.
        seg_normal_id: Id of ``[SEG_normal]``.
        banned_ids: Ids never chosen inside an answer.
        emitted_defect: ``(B,)`` bool, ``[SEG_defect]`` already emitted.

    Returns:
        ``(B,)`` chosen ids and ``(B,)`` bool, True where the choice was forced by the budget.

    """
    logits = logits.float().clone()
    logits[:, list(banned_ids)] = float("-inf")
    logits[:, seg_normal_id] = float("-inf")
    chosen = logits.argmax(dim=-1)
    chosen = torch.where(emitted_defect, torch.full_like(chosen, seg_normal_id), chosen)
    forced = ~emitted_defect & (chosen != seg_defect_id) & (step >= max_new_tokens - 2)
    chosen = torch.where(forced, torch.full_like(chosen, seg_defect_id), chosen)
    return chosen, forced


# One decoding step: ``(B, K)`` fed ids, ``(B, T)`` attention mask (the fed ones included),
# ``(B, K)`` positions -> ``(B, V)`` next-token logits after the last fed token and
# ``(B, K, D)`` final-layer states of the fed tokens (``K`` is 1, or 2 for the segmentation pair).
DecodeStep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def greedy_anchor_decode(
    first_logits: torch.Tensor,
    step: DecodeStep,
    attention_mask: torch.Tensor,
    last_position: torch.Tensor,
    seg_ids: tuple[int, int],
    banned_ids: Sequence[int],
    pad_id: int,
    max_new_tokens: int,
) -> DecodeResult:
    """Decode greedily after a prefill and read both anchors; the backend (torch, OpenVINO) is ``step``.

    Args:
        first_logits: ``(B, V)`` logits after the prompt (the prefill's last position).
        step: Feeds the chosen tokens through the cached decoder, see ``DecodeStep``.
        attention_mask: ``(B, L)`` prompt attention mask.
        last_position: ``(B,)`` position id of each prompt's last token.
        seg_ids: ``([SEG_defect] id, [SEG_normal] id)``.
        banned_ids: Ids never chosen inside an answer (turn and sequence ends, media tokens).
        pad_id: Id fed for images that have finished.
        max_new_tokens: Decoding budget, at least 2.

    """
    if max_new_tokens < 2:
        msg = f"max_new_tokens must be at least 2 to fit both segmentation tokens, got {max_new_tokens}."
        raise ValueError(msg)
    seg_defect_id, seg_normal_id = seg_ids
    logits, position = first_logits, last_position
    emitted_defect = torch.zeros(first_logits.shape[0], dtype=torch.bool, device=first_logits.device)
    finished = torch.zeros_like(emitted_defect)
    forced_any = torch.zeros_like(emitted_defect)
    tokens, states = [], []
    for index in range(max_new_tokens):
        chosen, forced = next_tokens(
            logits, index, max_new_tokens, seg_defect_id, seg_normal_id, banned_ids, emitted_defect
        )
        chosen = torch.where(finished, torch.full_like(chosen, pad_id), chosen)
        forced_any |= forced & ~finished
        fed = chosen[:, None]
        if bool(((chosen == seg_defect_id) | finished).all()):
            # every open answer ends now: its [SEG_normal] follows at once, fed in the same step
            following = torch.where(finished, torch.full_like(chosen, pad_id), torch.full_like(chosen, seg_normal_id))
            fed = torch.stack([chosen, following], dim=1)
        attention_mask = torch.cat([attention_mask, (~finished).long()[:, None].expand_as(fed)], dim=1)
        positions = position[:, None] + torch.arange(1, fed.shape[1] + 1, device=position.device)
        position = positions[:, -1]
        logits, state = step(fed, attention_mask, positions)
        tokens.extend(fed.unbind(dim=1))
        states.extend(state.unbind(dim=1))
        emitted_defect |= (chosen == seg_defect_id) & ~finished
        finished |= (fed == seg_normal_id).any(dim=1)
        if bool(finished.all()):
            break
    token_matrix = torch.stack(tokens, dim=1)
    anchors = anchor_states(torch.stack(states, dim=1), token_matrix, seg_ids)
    answers = [row[: row.index(seg_defect_id)] for row in token_matrix.tolist()]
    return DecodeResult(
        tokens=token_matrix,
        anchors=anchors,
        answer_tokens=answers,
        forced=forced_any,
        first_logits=first_logits.float(),
    )


@torch.no_grad()
def decode_with_anchors(
    llava: LlavaOnevisionForConditionalGeneration,
    prefill: dict,
    seg_ids: tuple[int, int],
    banned_ids: Sequence[int],
    pad_id: int,
    max_new_tokens: int,
) -> DecodeResult:
    """Prefill once, decode greedily with the model's KV cache, and read both anchors.

    Args:
        llava: The (LoRA-wrapped) LLaVA-OneVision model.
        prefill: Keyword arguments of the prefill forward: ``input_ids`` ``(B, L)`` left-padded,
            ``attention_mask`` ``(B, L)``, ``position_ids`` ``(B, L)`` and ``mm_encoder_outputs``.
        seg_ids: ``([SEG_defect] id, [SEG_normal] id)``.
        banned_ids: Ids never chosen inside an answer (turn and sequence ends, media tokens).
        pad_id: Id fed for images that have finished.
        max_new_tokens: Decoding budget, at least 2.

    """
    with merged_token_rows(llava):
        output = llava(**prefill, use_cache=True, logits_to_keep=1)
        cache = output.cache

        def step(
            ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            fed = llava(
                input_ids=ids,
                attention_mask=attention_mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                output_hidden_states=True,
                logits_to_keep=1,
            )
            return fed.logits[:, -1], fed.hidden_states[-1]

        return greedy_anchor_decode(
            output.logits[:, -1],
            step,
            prefill["attention_mask"],
            prefill["position_ids"][:, -1],
            seg_ids,
            banned_ids,
            pad_id,
            max_new_tokens,
        )


def anchor_states(hidden: torch.Tensor, tokens: torch.Tensor, seg_ids: tuple[int, int]) -> torch.Tensor:
    """Gather the final-layer states at the last ``[SEG_normal]`` and ``[SEG_defect]`` of each row.

    Args:
        hidden: ``(B, T, D)`` final-layer states aligned with ``tokens``.
        tokens: ``(B, T)`` ids.
        seg_ids: ``([SEG_defect] id, [SEG_normal] id)``.

    Returns:
        ``(B, 2, D)``: row 0 ``[SEG_normal]``, row 1 ``[SEG_defect]``.

    Raises:
        ValueError: A row lacks one of the tokens.

    """
    seg_defect_id, seg_normal_id = seg_ids
    positions = []
    for token_id, name in ((seg_normal_id, "[SEG_normal]"), (seg_defect_id, "[SEG_defect]")):
        present = tokens == token_id
        if not bool(present.any(dim=1).all()):
            missing = (~present.any(dim=1)).nonzero().flatten().tolist()
            msg = (
                f"Sequences {missing} contain no {name} token: every response must end with [SEG_defect] [SEG_normal]."
            )
            raise ValueError(msg)
        # index of the last occurrence in each row
        index = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        positions.append(torch.where(present, index, -1).amax(dim=1))
    gather_index = torch.stack(positions, dim=1)  # (B, 2)
    return hidden.gather(1, gather_index[..., None].expand(-1, -1, hidden.shape[-1]))


@torch.no_grad()
def option_log_likelihoods(
    llava: LlavaOnevisionForConditionalGeneration,
    prefill: dict,
    options: Sequence[Sequence[Sequence[int]]],
    pad_id: int,
) -> list[torch.Tensor]:
    """Sequence log-likelihood of each answer option after each prompt: constrained choice, no generation.

    The prompt is prefilled once; each option's tokens are then scored against the shared KV
    cache, which is cropped back to the prompt after every option.

    Args:
        llava: The (LoRA-wrapped) LLaVA-OneVision model.
        prefill: As for :func:`decode_with_anchors`.
        options: Per image, per option, its token ids (at least one each).
        pad_id: Id fed where an image has fewer options or shorter ones.

    Returns:
        Per image, ``(K_i,)`` summed log-probabilities of its ``K_i`` options' tokens.

    """
    with merged_token_rows(llava):
        output = llava(**prefill, use_cache=True, logits_to_keep=1)
        cache, first = output.cache, output.logits[:, -1].float().log_softmax(dim=-1)
        batch, device = first.shape[0], first.device
        end = prefill["position_ids"][:, -1]
        scores = [torch.zeros(len(image_options), device=device) for image_options in options]
        for k in range(max(len(image_options) for image_options in options)):
            sequences = [image_options[k] if k < len(image_options) else [pad_id] for image_options in options]
            width = max(len(sequence) for sequence in sequences)
            ids = torch.full((batch, width), pad_id, dtype=torch.long, device=device)
            mask = torch.zeros_like(ids)
            for row, sequence in enumerate(sequences):
                ids[row, : len(sequence)] = torch.tensor(sequence, device=device)
                mask[row, : len(sequence)] = 1
            total = first.gather(1, ids[:, :1]).squeeze(1)
            if width > 1:
                following = llava(
                    input_ids=ids[:, :-1],
                    attention_mask=torch.cat([prefill["attention_mask"], mask[:, :-1]], dim=1),
                    position_ids=end[:, None] + 1 + torch.arange(width - 1, device=device),
                    cache=cache,
                    use_cache=True,
                )
                log_probs = following.logits.float().log_softmax(dim=-1).gather(2, ids[:, 1:, None]).squeeze(2)
                total = total + (log_probs * mask[:, 1:]).sum(dim=1)
                cache.crop(-(width - 1))
            for row, image_options in enumerate(options):
                if k < len(image_options):
                    scores[row][k] = total[row]
        return scores
