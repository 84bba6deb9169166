"""Greedy decoding and constrained choice on the torch model, with its KV cache.

The backend-free greedy loop is :func:`~.decoding.greedy_anchor_decode`; here the torch model
supplies its prefill and decoding steps. The new tokens' trained rows are merged into the
embedding for these no-grad passes (``merged_token_rows``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LlavaOnevisionForConditionalGeneration

from anomalib_genau.dialogue import TokenPair

from .decoding import DecodeResult, greedy_anchor_decode
from .vlm import merged_token_rows


@torch.no_grad()
def decode_with_anchors(
    llava: LlavaOnevisionForConditionalGeneration,
    prefill: dict,
    seg_ids: TokenPair,
    banned_ids: Sequence[int],
    pad_id: int,
    max_new_tokens: int,
) -> DecodeResult:
    """Prefill once, decode greedily with the model's KV cache, and read both anchors.

    Args:
        llava: The (LoRA-wrapped) LLaVA-OneVision model.
        prefill: Keyword arguments of the prefill forward: ``input_ids`` ``(B, L)`` left-padded,
            ``attention_mask`` ``(B, L)``, ``position_ids`` ``(B, L)`` and ``mm_encoder_outputs``.
        seg_ids: Ids of ``[SEG_normal]`` and ``[SEG_defect]``.
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
