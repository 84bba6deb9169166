"""Greedy KV-cached decoding that always ends an answer with ``[SEG_defect] [SEG_normal]``.

transformers' ``generate`` never computes the hidden state of the last token it emits and
stores every layer's state for every step; GenAU needs exactly the last layer's state of
the two segmentation tokens, the last of which is the final token. So this module runs the
model's own forward with its KV cache (torch: ``torch_decoding``; OpenVINO: the inferencer's
stateful decoder graph): prefill once, decode greedily, and each step that feeds tokens
returns their final-layer states. ``[SEG_normal]`` always follows
``[SEG_defect]``, so once every open answer of the batch emits ``[SEG_defect]`` the two go
through the decoder in one step, which reads both anchors (one decoder pass fewer than
feeding them one by one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from anomalib_genau.dialogue import TokenPair


@dataclass
class DecodeResult:
    """Output of :func:`greedy_anchor_decode`.

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
    seg_ids: TokenPair,
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
        seg_ids: Ids of ``[SEG_normal]`` and ``[SEG_defect]``.
        banned_ids: Ids never chosen inside an answer.
        emitted_defect: ``(B,)`` bool, ``[SEG_defect]`` already emitted.

    Returns:
        ``(B,)`` chosen ids and ``(B,)`` bool, True where the choice was forced by the budget.

    """
    logits = logits.float().clone()
    logits[:, list(banned_ids)] = float("-inf")
    logits[:, seg_ids.normal] = float("-inf")
    chosen = logits.argmax(dim=-1)
    chosen = torch.where(emitted_defect, torch.full_like(chosen, seg_ids.normal), chosen)
    forced = ~emitted_defect & (chosen != seg_ids.defect) & (step >= max_new_tokens - 2)
    chosen = torch.where(forced, torch.full_like(chosen, seg_ids.defect), chosen)
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
    seg_ids: TokenPair,
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
        seg_ids: Ids of ``[SEG_normal]`` and ``[SEG_defect]``.
        banned_ids: Ids never chosen inside an answer (turn and sequence ends, media tokens).
        pad_id: Id fed for images that have finished.
        max_new_tokens: Decoding budget, at least 2.

    """
    if max_new_tokens < 2:
        msg = f"max_new_tokens must be at least 2 to fit both segmentation tokens, got {max_new_tokens}."
        raise ValueError(msg)
    seg_defect_id, seg_normal_id = seg_ids.defect, seg_ids.normal
    logits, position = first_logits, last_position
    emitted_defect = torch.zeros(first_logits.shape[0], dtype=torch.bool, device=first_logits.device)
    finished = torch.zeros_like(emitted_defect)
    forced_any = torch.zeros_like(emitted_defect)
    tokens, states = [], []
    for index in range(max_new_tokens):
        chosen, forced = next_tokens(logits, index, max_new_tokens, seg_ids, banned_ids, emitted_defect)
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


@dataclass
class Draft:
    """An answer fed to the decoder after the prompt in the prefill, to be checked against the greedy choice.

    Attributes:
        ids: The answer's ids, ending with ``[SEG_defect] [SEG_normal]`` (``n`` of them).
        logits: ``(B, n - 2, V)`` next-token logits after each of its ids before ``[SEG_defect]``.
        states: ``(B, n, D)`` final-layer states of its ids.

    """

    ids: list[int]
    logits: torch.Tensor
    states: torch.Tensor


def drafted_decode(
    first_logits: torch.Tensor,
    drafts: Sequence[Draft],
    seg_ids: TokenPair,
    banned_ids: Sequence[int],
    pad_id: int,
    max_new_tokens: int,
) -> DecodeResult | None:
    """:func:`greedy_anchor_decode`'s result without a decoding step, when every image's greedy answer is a draft.

    A draft is an image's greedy answer exactly when :func:`next_tokens`, given the prompt's
    logits and then the draft's own, chooses each of its ids in turn up to ``[SEG_defect]``
    (whose ``[SEG_normal]`` always follows), none of them forced by the budget. Its states are
    then the decoding steps' states, and the anchors are read from them. A template answer,
    which GenAU's training teaches, is thus checked in the prefill: speculative decoding with
    the response format as the draft (no library offers it on OpenVINO's stateful decoder).

    Args:
        first_logits: ``(B, V)`` logits after the prompt.
        drafts: The answers fed after the prompt, with the decoder's logits and states.
        seg_ids: Ids of ``[SEG_normal]`` and ``[SEG_defect]``.
        banned_ids: Ids never chosen inside an answer.
        pad_id: Id after ``[SEG_normal]`` in answers shorter than the longest.
        max_new_tokens: The decoding budget :func:`greedy_anchor_decode` would have.

    Returns:
        The decoded result, or ``None`` where an image's greedy answer is none of the drafts.

    Raises:
        ValueError: A draft does not end with ``[SEG_defect] [SEG_normal]``.

    """
    batch = first_logits.shape[0]
    accepted: list[Draft | None] = [None] * batch
    not_emitted = torch.zeros(batch, dtype=torch.bool)
    first = next_tokens(first_logits, 0, max_new_tokens, seg_ids, banned_ids, not_emitted)  # every draft's
    for draft in drafts:
        if draft.ids[-2:] != [seg_ids.defect, seg_ids.normal]:
            msg = f"Draft {draft.ids} does not end with [SEG_defect] [SEG_normal]."
            raise ValueError(msg)
        match, emitted_defect = torch.ones(batch, dtype=torch.bool), not_emitted
        for index, expected in enumerate(draft.ids[:-1]):
            if not bool(match.any()):
                break  # no image's answer: the other ids need not be checked
            if index:
                logits = draft.logits[:, index - 1]
                chosen, forced = next_tokens(logits, index, max_new_tokens, seg_ids, banned_ids, emitted_defect)
            else:
                chosen, forced = first
            match = match & (chosen == expected) & ~forced  # a forced answer is decoded, to report it as forced
            emitted_defect = emitted_defect | (chosen == seg_ids.defect)
        for row in match.nonzero().flatten().tolist():
            accepted[row] = accepted[row] or draft
    if any(draft is None for draft in accepted):
        return None
    width = max(len(draft.ids) for draft in accepted)
    tokens = torch.full((batch, width), pad_id, dtype=torch.long)
    states = torch.zeros(batch, width, drafts[0].states.shape[-1])
    for row, draft in enumerate(accepted):
        tokens[row, : len(draft.ids)] = torch.tensor(draft.ids)
        states[row, : len(draft.ids)] = draft.states[row].float()
    return DecodeResult(
        tokens=tokens,
        anchors=anchor_states(states, tokens, seg_ids),
        answer_tokens=[draft.ids[:-2] for draft in accepted],
        forced=torch.zeros(batch, dtype=torch.bool),
        first_logits=first_logits.float(),
    )


def anchor_states(hidden: torch.Tensor, tokens: torch.Tensor, seg_ids: TokenPair) -> torch.Tensor:
    """Gather the final-layer states at the last ``[SEG_normal]`` and ``[SEG_defect]`` of each row.

    Args:
        hidden: ``(B, T, D)`` final-layer states aligned with ``tokens``.
        tokens: ``(B, T)`` ids.
        seg_ids: Ids of ``[SEG_normal]`` and ``[SEG_defect]``.

    Returns:
        ``(B, 2, D)``: row 0 ``[SEG_normal]``, row 1 ``[SEG_defect]``.

    Raises:
        ValueError: A row lacks one of the tokens.

    """
    positions = []
    for token_id, name in ((seg_ids.normal, "[SEG_normal]"), (seg_ids.defect, "[SEG_defect]")):
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
