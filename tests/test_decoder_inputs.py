"""The exported decoder's attention masks: a prompt tree reads its ancestors, never its siblings."""

from __future__ import annotations

import numpy as np

from anomalib_genau.deploy.decoder_inputs import MASKED, PromptTree, step_mask


def test_a_prompt_tree_reads_its_ancestors_and_not_its_siblings() -> None:
    """Shared tokens, two prompts after them, an option after the second: positions and mask."""
    tree = PromptTree()
    shared = tree.add(2)
    first = tree.add(2, shared)
    second = tree.add(1, shared)
    option = tree.add(2, second)
    assert len(tree) == 7
    assert tree.positions().tolist() == [0, 1, 2, 3, 2, 3, 4]
    assert tree.indices(option).tolist() == [5, 6] and tree.indices(first).tolist() == [2, 3]
    reads = np.array(
        [
            [1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],  # the first prompt: the shared tokens and itself
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 0, 0, 1, 0, 0],  # the second prompt: not the first
            [1, 1, 0, 0, 1, 1, 0],  # the option: the second prompt's path
            [1, 1, 0, 0, 1, 1, 1],
        ],
        dtype=bool,
    )
    mask = tree.mask(batch=3)
    assert mask.shape == (3, 1, 7, 7) and mask.dtype == np.float32
    assert np.array_equal(mask[2, 0] == 0, reads)
    assert np.all(mask[:, 0][:, ~reads] == MASKED)
    assert tree.visible(second).tolist() == [True, True, False, False, True, False, False]


def test_a_step_reads_the_visible_past_and_the_new_tokens_before_it() -> None:
    """Two rows of two new tokens after three cached ones; padding is read by no one."""
    past = np.array([[True, False, True], [True, True, True]])
    new = np.array([[True, True], [True, False]])
    reads = step_mask(past, new) == 0
    assert reads.shape == (2, 1, 2, 5)
    assert reads[0, 0].tolist() == [[True, False, True, True, False], [True, False, True, True, True]]
    assert reads[1, 0].tolist() == [[True, True, True, True, False], [True, True, True, True, False]]
