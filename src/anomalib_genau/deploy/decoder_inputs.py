"""The exported decoder's inputs, and which tokens each token reads: prompts that share a beginning, in one pass.

The decoder graph takes the 4-D additive attention mask ``(B, 1, L, T + L)`` itself
(transformers passes a 4-D mask through as it is). With it, one pass holds a tree of token
segments, each reading its ancestors whole and itself causally: the shared system turn and
image tokens, each question's own tokens after them, and the type options after the type
question. A 2-D padding mask can only say which cached positions a whole row reads, so each
branch took a pass of its own (one weight read of the decoder each; benchmarks/RESULTS.md).
No library builds such masks for OpenVINO's stateful decoder, hence this module.
"""

from __future__ import annotations

import numpy as np

MASKED = np.finfo(np.float32).min


def additive(visible: np.ndarray) -> np.ndarray:
    """A boolean mask as the decoder reads it: 0 where visible, the float32 minimum elsewhere."""
    return np.where(visible, np.float32(0), MASKED).astype(np.float32)


def step_mask(past: np.ndarray, new: np.ndarray) -> np.ndarray:
    """``(B, 1, K, T + K)`` mask of ``K`` new tokens after ``T`` cached ones.

    Args:
        past: ``(B, T)`` bool, the cached positions the new tokens read.
        new: ``(B, K)`` bool, the new tokens that are read (False: padding), each by itself and
            the new tokens after it.

    """
    batch, count = new.shape
    causal = np.tril(np.ones((count, count), dtype=bool))
    past_rows = np.broadcast_to(past[:, None, :], (batch, count, past.shape[1]))
    return additive(np.concatenate([past_rows, new[:, None, :] & causal], axis=2)[:, None])


class PromptTree:
    """Token segments fed in one pass, each continuing its parent segment (``None``: the start)."""

    def __init__(self) -> None:
        self.parents: list[int | None] = []
        self.lengths: list[int] = []

    def add(self, length: int, parent: int | None = None) -> int:
        """Append a segment of ``length`` tokens after ``parent``; returns its index."""
        self.parents.append(parent)
        self.lengths.append(length)
        return len(self.lengths) - 1

    def __len__(self) -> int:
        """Tokens in the pass."""
        return sum(self.lengths)

    def offset(self, segment: int) -> int:
        """Where ``segment``'s first token lies in the pass."""
        return sum(self.lengths[:segment])

    def start(self, segment: int) -> int:
        """The position id of ``segment``'s first token: its ancestors' length."""
        parent = self.parents[segment]
        return 0 if parent is None else self.start(parent) + self.lengths[parent]

    def indices(self, segment: int) -> np.ndarray:
        """``(n,)`` indices of ``segment``'s tokens in the pass."""
        return np.arange(self.offset(segment), self.offset(segment) + self.lengths[segment])

    def visible(self, segment: int) -> np.ndarray:
        """``(L,)`` bool: the tokens a continuation of ``segment`` reads (it and its ancestors)."""
        visible = np.zeros(len(self), dtype=bool)
        node: int | None = segment
        while node is not None:
            visible[self.indices(node)] = True
            node = self.parents[node]
        return visible

    def positions(self) -> np.ndarray:
        """``(L,)`` position ids: each segment continues its parent's."""
        return np.concatenate(
            [self.start(segment) + np.arange(length) for segment, length in enumerate(self.lengths)]
        ).astype(np.int64)

    def mask(self, batch: int) -> np.ndarray:
        """``(B, 1, L, L)`` mask: each token reads its segment's ancestors and its own segment up to itself."""
        rows = np.zeros((len(self), len(self)), dtype=bool)
        for segment, parent in enumerate(self.parents):
            own = self.indices(segment)
            if parent is not None:
                rows[own] = self.visible(parent)
            rows[own[:, None], own[None, :]] = np.tril(np.ones((len(own), len(own)), dtype=bool))
        return additive(np.broadcast_to(rows, (batch, 1, *rows.shape)))


def decoder_inputs(
    embeds: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, logits_positions: np.ndarray
) -> dict[str, np.ndarray]:
    """The decoder graph's inputs for ``embeds (B, L, D)``, each row continuing its own cached row.

    ``attention_mask (B, 1, L, T + L)`` as :func:`step_mask` or :meth:`PromptTree.mask` give it,
    ``position_ids (B, L)``, ``logits_positions (K,)`` the new positions whose logits are wanted.
    """
    return {
        "inputs_embeds": embeds,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "beam_idx": np.arange(embeds.shape[0], dtype=np.int64),
        "logits_positions": np.asarray(logits_positions, dtype=np.int64),
    }
