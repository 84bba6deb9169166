"""Constrained greedy decoding and anchor reading, checked against a teacher-forced pass."""

import pytest
import torch

from anomalib_genau.dialogue import TokenPair
from anomalib_genau.models.genau.decoding import (
    DecodeResult,
    Draft,
    anchor_states,
    drafted_decode,
    greedy_anchor_decode,
    next_tokens,
)
from anomalib_genau.models.genau.torch_decoding import decode_with_anchors
from anomalib_genau.models.genau.torch_model import GenAUModel

DEFECT_ID, NORMAL_ID, EOS_ID = 7, 8, 9
SEG_IDS = TokenPair(normal=NORMAL_ID, defect=DEFECT_ID)


def test_next_tokens_follow_the_response_format() -> None:
    logits = torch.zeros(3, 10)
    logits[:, EOS_ID] = 10  # the end of turn is banned inside an answer
    logits[:, NORMAL_ID] = 9  # [SEG_normal] may not come before [SEG_defect]
    logits[:, 2] = 5
    emitted = torch.tensor([False, True, False])
    chosen, forced = next_tokens(logits, 0, 16, SEG_IDS, [EOS_ID], emitted)
    assert chosen.tolist() == [2, NORMAL_ID, 2]
    assert not forced.any()
    chosen, forced = next_tokens(logits, 14, 16, SEG_IDS, [EOS_ID], emitted)
    assert chosen.tolist() == [DEFECT_ID, NORMAL_ID, DEFECT_ID]
    assert forced.tolist() == [True, False, True]
    logits[0, DEFECT_ID] = 20  # emitted freely: not forced
    chosen, forced = next_tokens(logits, 14, 16, SEG_IDS, [EOS_ID], emitted)
    assert chosen[0] == DEFECT_ID
    assert not forced[0]


class ToyDecoder:
    """A decoder whose next token depends on the last fed one only (``following``), and whose states on the token."""

    def __init__(self) -> None:
        self.following = {3: 4, 4: DEFECT_ID, 5: 6, 6: DEFECT_ID, 1: 2}
        self.states = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """``(..., V)`` next-token logits after each id."""
        chosen = torch.tensor([self.following.get(int(i), 2) for i in ids.flatten()]).view(ids.shape)
        return torch.nn.functional.one_hot(chosen, 10).float() * 5

    def step(self, fed: torch.Tensor, *_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A decoding step: logits after the last fed id, the fed ids' states."""
        return self.logits(fed[:, -1]), self.states[fed]

    def draft(self, ids: list[int], batch: int) -> Draft:
        """``ids`` as the prefill reads them: logits after each id before ``[SEG_defect]``, every id's states."""
        tokens = torch.tensor(ids).expand(batch, -1)
        return Draft(ids, self.logits(tokens[:, :-2]), self.states[tokens])


def test_drafts_that_are_the_greedy_answers_give_its_result_without_a_step() -> None:
    """Each image's greedy answer among the drafts: the same tokens, answers and anchors, no decoding step."""
    toy = ToyDecoder()
    first = torch.nn.functional.one_hot(torch.tensor([3, 5]), 10).float() * 5  # image 0 starts with 3, image 1 with 5
    drafts = [toy.draft([5, 1, DEFECT_ID, NORMAL_ID], 2), toy.draft([3, 4, DEFECT_ID, NORMAL_ID], 2)]
    drafts.append(toy.draft([5, 6, DEFECT_ID, NORMAL_ID], 2))
    steps = []
    greedy = greedy_anchor_decode(
        first,
        lambda *args: steps.append(args[0]) or toy.step(*args),
        torch.ones(2, 3, dtype=torch.long),
        torch.full((2,), 2),
        SEG_IDS,
        [EOS_ID],
        0,
        16,
    )
    drafted = drafted_decode(first, drafts, SEG_IDS, [EOS_ID], 0, 16)
    assert len(steps) == 3 and drafted is not None
    assert drafted.answer_tokens == greedy.answer_tokens == [[3, 4], [5, 6]]
    assert torch.equal(drafted.tokens, greedy.tokens)
    assert torch.equal(drafted.anchors, greedy.anchors)
    assert torch.equal(drafted.first_logits, greedy.first_logits) and not drafted.forced.any()
    # one image's answer is no draft, or the budget forces [SEG_defect] before a draft's: decode
    assert drafted_decode(first, drafts[:2], SEG_IDS, [EOS_ID], 0, 16) is None
    assert drafted_decode(first, drafts, SEG_IDS, [EOS_ID], 0, 3) is None
    forced = [toy.draft([3, DEFECT_ID, NORMAL_ID], 2), toy.draft([5, DEFECT_ID, NORMAL_ID], 2)]
    assert drafted_decode(first, forced, SEG_IDS, [EOS_ID], 0, 3) is None  # greedy's, but forced
    with pytest.raises(ValueError, match="does not end with"):
        drafted_decode(first, [toy.draft([3, 4, 5, 6], 2)], SEG_IDS, [EOS_ID], 0, 16)


def test_anchor_states_take_the_last_occurrences_in_normal_defect_order() -> None:
    tokens = torch.tensor([[1, DEFECT_ID, 2, DEFECT_ID, NORMAL_ID], [DEFECT_ID, NORMAL_ID, 0, 0, 0]])
    hidden = torch.arange(10, dtype=torch.float).view(2, 5, 1)
    anchors = anchor_states(hidden, tokens, SEG_IDS)
    assert anchors.squeeze(-1).tolist() == [[4.0, 3.0], [6.0, 5.0]]
    with pytest.raises(ValueError, match=r"Sequences \[1\] contain no \[SEG_normal\]"):
        anchor_states(hidden, torch.tensor([[DEFECT_ID, NORMAL_ID], [DEFECT_ID, 1]]), SEG_IDS)


def test_the_segmentation_pair_is_fed_in_one_step_once_every_open_answer_ends() -> None:
    """Row 0 ends at its second token, row 1 at its fourth: only row 1's pair shares a step."""
    vocab, ends_at = 10, (1, 3)  # the index of each row's [SEG_defect]
    fed = []

    def step(ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fed.append((ids.tolist(), mask.tolist(), positions.tolist()))
        logits = torch.zeros(2, vocab)
        for row, end in enumerate(ends_at):
            logits[row, DEFECT_ID if len(fed) == end else len(fed)] = 1.0
        return logits, positions[..., None].float().expand(-1, -1, 3)  # a state that names its position

    first_logits = torch.zeros(2, vocab)
    first_logits[:, 0] = 1.0
    decoded = greedy_anchor_decode(
        first_logits, step, torch.tensor([[0, 1], [1, 1]]), torch.tensor([0, 1]), SEG_IDS, [EOS_ID], 0, 8
    )
    assert decoded.tokens.tolist() == [[0, DEFECT_ID, NORMAL_ID, 0, 0], [0, 1, 2, DEFECT_ID, NORMAL_ID]]
    assert [ids for ids, _, _ in fed] == [
        [[0], [0]],
        [[DEFECT_ID], [1]],
        [[NORMAL_ID], [2]],
        [[0, 0], [DEFECT_ID, NORMAL_ID]],
    ]
    # the finished row is masked out and the positions run on past the prompt's last
    assert fed[-1][1] == [[0, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]]
    assert fed[-1][2] == [[4, 5], [5, 6]]
    assert decoded.anchors[..., 0].tolist() == [[3.0, 2.0], [6.0, 5.0]]  # ([SEG_normal], [SEG_defect]) positions
    assert decoded.answer_tokens == [[0], [0, 1, 2]]
    assert not decoded.forced.any()


def _prefill(model: GenAUModel, images: torch.Tensor, instructions: list[str]) -> tuple[dict, dict]:
    """The processor's own encoding of images and prompts, and GenAU's prefill of the same."""
    chats = [model.codec.chat(text) for text in instructions]
    encoded = model.processor(images=list(images), text=chats, return_tensors="pt", padding=True, do_rescale=False)
    vision = model.see(images)
    return encoded, model.prefill_inputs(model.prompts(vision, instructions), vision)


def _decode(model: GenAUModel, prefill: dict, max_new_tokens: int) -> DecodeResult:
    codec = model.codec
    return decode_with_anchors(model.llava, prefill, codec.seg_ids, codec.banned_ids, codec.pad_id, max_new_tokens)


def _teacher_forced(model: GenAUModel, encoded: dict, tokens: torch.Tensor) -> tuple[torch.Tensor, object]:
    """One unmerged (peft's own forward) pass over the prompt and ``tokens``: the anchors and the output."""
    input_ids = torch.cat([encoded["input_ids"], tokens], dim=1)
    attention_mask = torch.cat([encoded["attention_mask"], torch.ones_like(tokens)], dim=1)
    with torch.no_grad():
        output = model.llava(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=model.position_ids(attention_mask),
            pixel_values=encoded["pixel_values"],
            image_sizes=encoded["image_sizes"],
            output_hidden_states=True,
        )
    return anchor_states(output.hidden_states[-1], input_ids, model.codec.seg_ids), output


def test_cached_decoding_anchors_equal_a_teacher_forced_pass(torch_model: GenAUModel) -> None:
    model = torch_model.eval()
    torch.manual_seed(1)
    images = torch.rand(2, 3, 112, 112)
    # different prompt lengths, so the batch is left-padded
    instructions = ["Is there any anomaly on the carpet? If yes, segment it.", "Inspect the tile."]
    encoded, prefill = _prefill(model, images, instructions)
    assert (encoded["attention_mask"][:, 0] == 0).any()
    decoded = _decode(model, prefill, 6)
    assert decoded.tokens.shape == (2, 6)
    assert decoded.forced.all()  # the random model never emits [SEG_defect] by itself
    assert decoded.tokens[:, -2:].tolist() == [[model.codec.seg_ids.defect, model.codec.seg_ids.normal]] * 2
    # teacher-forced pass over prompt + generated tokens gives the same final-layer anchor states
    expected, _ = _teacher_forced(model, encoded, decoded.tokens)
    torch.testing.assert_close(decoded.anchors, expected, atol=1e-4, rtol=1e-4)


def test_batch_decoding_equals_one_by_one(torch_model: GenAUModel) -> None:
    model = torch_model.eval()
    torch.manual_seed(2)
    images = torch.rand(2, 3, 112, 112)
    instructions = ["Is there any anomaly on the carpet? If yes, segment it.", "Check the tile."]
    together = model.inspect(images, instructions)
    for index in range(2):
        alone = model.inspect(images[index : index + 1], instructions[index : index + 1])
        torch.testing.assert_close(together.batch.anomaly_map[index], alone.batch.anomaly_map[0], atol=1e-4, rtol=1e-4)
        assert together.answers[index] == alone.answers[0]


def test_decoding_needs_room_for_both_tokens(torch_model: GenAUModel) -> None:
    model = torch_model.eval()
    _, prefill = _prefill(model, torch.rand(1, 3, 112, 112), ["Inspect."])
    with pytest.raises(ValueError, match="at least 2"):
        _decode(model, prefill, 1)


def test_decoding_reads_the_trained_token_rows_merged_and_restores_the_base_rows(torch_model: GenAUModel) -> None:
    model = torch_model.eval()
    torch.manual_seed(3)
    with torch.no_grad():  # trained token rows and LoRA, as after training
        for name, parameter in model.vlm.named_parameters():
            if "trainable_tokens_delta" in name or "lora_B" in name:
                parameter.add_(torch.randn_like(parameter))
    embeddings = model.llava.get_input_embeddings().token_adapter  # peft's trainable-tokens layer
    lm_head = model.llava.get_output_embeddings().token_adapter
    base_rows = embeddings.base_layer.weight.detach().clone()
    merged_during_steps = []
    hook = embeddings.register_forward_pre_hook(lambda layer, _: merged_during_steps.append(layer.merged))
    encoded, prefill = _prefill(model, torch.rand(1, 3, 112, 112), ["Inspect the carpet."])
    decoded = _decode(model, prefill, 5)
    hook.remove()
    # the prefill and every step (the segmentation pair in one) ran on the merged rows, and the
    # base rows are back bit for bit
    assert merged_during_steps == [True] * 5
    assert not embeddings.merged and not lm_head.merged
    assert torch.equal(embeddings.base_layer.weight, base_rows)
    assert lm_head.base_layer.weight.data_ptr() == embeddings.base_layer.weight.data_ptr()  # still tied
    # an unmerged teacher-forced pass reads the same anchors and first logits
    expected, output = _teacher_forced(model, encoded, decoded.tokens)
    torch.testing.assert_close(decoded.anchors, expected, atol=1e-4, rtol=1e-4)
    prompt_end = encoded["input_ids"].shape[1] - 1
    torch.testing.assert_close(decoded.first_logits, output.logits[:, prompt_end], atol=1e-4, rtol=1e-4)
