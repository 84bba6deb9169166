"""GenAU's torch model: label masking, token positions, trainable vs frozen parameters, outputs."""

import pytest
import torch
from anomalib.data import InferenceBatch

from anomalib_genau.choices import VISUAL_TOKENS
from anomalib_genau.models.genau.loss import GenAULoss
from anomalib_genau.models.genau.torch_model import GenAUModel
from anomalib_genau.models.genau.vision import split_views

PROMPTS = ["Is there any anomaly on the carpet? If yes, segment it.", "Check the tile."]
RESPONSES = ["Yes, hole. [SEG_defect] [SEG_normal]", "No, the tile is normal. [SEG_defect] [SEG_normal]"]


def test_labels_cover_the_response_only(torch_model: GenAUModel) -> None:
    prompts = torch_model.prompts(torch_model.see(torch.rand(2, 3, 112, 112)), PROMPTS)
    input_ids, attention_mask, labels = torch_model.append_responses(prompts, RESPONSES)
    prompt_length = prompts.input_ids.shape[1]
    assert (labels[:, :prompt_length] == -100).all()
    tokenizer = torch_model.processor.tokenizer
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row, response in enumerate(RESPONSES):
        expected = [*tokenizer(response, add_special_tokens=False)["input_ids"], im_end]
        supervised = labels[row][labels[row] != -100].tolist()
        assert supervised == expected
        # the two segmentation tokens close the answer, right before the end of turn
        assert supervised[-3:-1] == [torch_model.codec.seg_ids.defect, torch_model.codec.seg_ids.normal]
        assert attention_mask[row].sum() == prompts.attention_mask[row].sum() + len(expected)
    image_token = torch_model.llava.config.image_token_index
    assert (input_ids == image_token).sum(dim=1).min() > 0
    assert (labels == image_token).sum() == 0


def test_response_without_segmentation_tokens_is_refused(torch_model: GenAUModel) -> None:
    with pytest.raises(ValueError, match=r"must end with '\[SEG_defect\] \[SEG_normal\]'"):
        torch_model.codec.response_ids("Yes, hole.")


def _step(model: GenAUModel) -> None:
    model.train()
    output = model(torch.rand(2, 3, 112, 112), PROMPTS, RESPONSES)
    masks = torch.zeros(2, 112, 112)
    masks[0, 30:60, 30:60] = 1
    GenAULoss()(output.lm_loss, output.stage_logits, masks)["loss"].backward()


def test_gradients_reach_trainable_parameters_only(torch_model: GenAUModel) -> None:
    model = torch_model
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    groups = {
        "lora": [n for n in trainable if "lora_" in n],
        "token rows": [n for n in trainable if "trainable_tokens_delta" in n],
        "projectors": [n for n in trainable if n.startswith("readout.projections")],
        "decoder norms": [n for n in trainable if "language_model" in n and "norm" in n],
    }
    assert all(groups.values()), groups
    assert trainable == set().union(*map(set, groups.values()))
    assert not any("vision_tower" in n or "multi_modal_projector" in n for n in trainable)
    assert not any("lora_" in n for n in groups["lora"] if "vision" in n)
    _step(model)
    grads = {name: p.grad for name, p in model.named_parameters()}
    for name in groups["token rows"] + groups["projectors"] + groups["decoder norms"]:
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    # LoRA B starts at zero, so B gets gradients and A gets them after B moves
    assert all(grads[n].abs().sum() > 0 for n in groups["lora"] if "lora_B" in n)
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            assert grads[name] is None, name


def test_an_optimizer_step_changes_the_new_token_rows_only(torch_model: GenAUModel) -> None:
    model = torch_model
    embed = model.llava.get_input_embeddings()
    old_ids = torch.arange(min(model.codec.seg_ids))
    new_ids = torch.tensor(model.codec.seg_ids)
    before_old, before_new = embed(old_ids).detach().clone(), embed(new_ids).detach().clone()
    vision_before = [p.detach().clone() for p in model.llava.model.vision_tower.parameters()]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    _step(model)
    optimizer.step()
    assert torch.equal(embed(old_ids), before_old)
    assert not torch.allclose(embed(new_ids), before_new)
    assert all(
        torch.equal(a, b) for a, b in zip(vision_before, model.llava.model.vision_tower.parameters(), strict=True)
    )


def test_eval_forward_returns_an_inference_batch(torch_model: GenAUModel) -> None:
    model = torch_model.eval()
    images = torch.rand(3, 3, 96, 128)
    output = model(images)
    assert isinstance(output, InferenceBatch)
    assert output.anomaly_map.shape == (3, 1, 96, 128)
    assert output.pred_score.shape == (3,)
    assert output.anomaly_map.min() >= 0.0
    assert output.anomaly_map.max() <= 1.0
    torch.testing.assert_close(output.pred_score, output.anomaly_map.flatten(1).amax(dim=1))
    inspection = model.inspect(images)
    assert len(inspection.answers) == 3
    assert all("[SEG" not in answer for answer in inspection.answers)


def test_grayscale_images_are_repeated_to_rgb_and_other_channel_counts_refused(torch_model: GenAUModel) -> None:
    model = torch_model.eval()
    gray = torch.rand(1, 1, 112, 112)
    torch.testing.assert_close(model(gray).anomaly_map, model(gray.expand(-1, 3, -1, -1)).anomaly_map)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 4, 112, 112))
    with pytest.raises(ValueError, match="needs one response per image"):
        model.train()(torch.rand(1, 3, 112, 112))


def test_segmentation_tokens_use_spare_embedding_rows_like_qwen2_checkpoints(tiny_backbone) -> None:
    """Qwen2 checkpoints have more embedding rows than tokens: the new tokens take spare rows."""
    from anomalib_genau.backbone import load_backbone
    from anomalib_genau.models.genau.vlm import add_segmentation_tokens

    model, processor = load_backbone(tiny_backbone)
    tokens = len(processor.tokenizer)
    model.resize_token_embeddings(tokens + 16, mean_resizing=False)
    ids = add_segmentation_tokens(model, processor.tokenizer)
    assert ids == (tokens + 1, tokens)  # (normal, defect); [SEG_defect] is added first
    assert model.get_input_embeddings().num_embeddings == tokens + 16
    rows = model.get_input_embeddings().weight[list(ids)]
    assert torch.isfinite(rows).all()
    assert not torch.equal(rows[0], rows[1])


def _groups(model: GenAUModel) -> dict[str, int]:
    """Count trainable parameter tensors per group."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    rules = {
        "lora": lambda n: "lora_" in n,
        "token rows": lambda n: "trainable_tokens_delta" in n,
        "readout": lambda n: n.startswith("readout."),
        "decoder norms": lambda n: "language_model" in n and "norm" in n,
        "projector": lambda n: "multi_modal_projector" in n,
        "vision": lambda n: "vision_tower" in n,
    }
    counts = {group: sum(rule(n) for n in names) for group, rule in rules.items()}
    assert sum(counts.values()) == len(names), "a trainable parameter outside every group"
    return counts


@pytest.mark.parametrize(
    ("flags", "changed"),
    [
        ({}, {}),
        ({"lora": False}, {"lora": 0}),
        ({"train_projector": True}, {"projector": 4}),
        ({"train_vision": True}, {"vision": None}),
        ({"vision_layers": [3, 6]}, {"readout": 4}),
        ({"score_fusion": False, "high_res_readout": False}, {}),
    ],
)
def test_ablation_switches_change_only_what_they_name(tiny_backbone, flags: dict, changed: dict) -> None:
    default = _groups(GenAUModel(str(tiny_backbone)))
    assert default["projector"] == default["vision"] == 0
    assert default["readout"] == 8  # 4 stages x (weight, bias)
    assert min(default["lora"], default["token rows"], default["decoder norms"]) > 0
    ablated = _groups(GenAUModel(str(tiny_backbone), **flags))
    for group, count in ablated.items():
        if group not in changed:
            assert count == default[group], group
        elif changed[group] is None:
            assert count > 0, group
        else:
            assert count == changed[group], group


def test_high_res_readout_on_a_non_square_image(torch_model: GenAUModel) -> None:
    model = torch_model.eval()
    torch.manual_seed(3)
    images = torch.rand(1, 3, 224, 336)  # 2 x 3 tiles of 112 px
    vision = model.see(images)
    assert [tuple(stage.shape) for stage in vision.tile_stages[0]] == [(6, 196, 64)] * 4
    anchors = torch.randn(1, 2, 128)
    (high_res,) = model.high_res_logits(vision, anchors)
    assert high_res.shape == (4, 1, 2, 28, 42)  # native resolution of the high-res map
    fused = model(images).anomaly_map
    model.high_res_readout = False
    global_only = model(images).anomaly_map
    assert fused.shape == global_only.shape == (1, 1, 224, 336)
    assert not torch.allclose(fused, global_only)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_backbone) -> None:
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = GenAUModel(str(tiny_backbone), lora_dropout=0.0, gradient_checkpointing=checkpointing)
        torch.manual_seed(1)
        _step(model)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert model.llava.model.language_model.is_gradient_checkpointing
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-6), name


def test_a_batch_of_mixed_sizes_equals_the_images_one_by_one(torch_model: GenAUModel) -> None:
    """Different sizes give different AnyRes grids (1x1, 1x2, 2x1 tiles here) and prompt lengths."""
    torch_model.eval()
    torch.manual_seed(0)
    images = [torch.rand(3, 112, 112), torch.rand(3, 112, 168), torch.rand(3, 224, 140)]
    instructions = [PROMPTS[0]] * 3
    together = torch_model.inspect(images, instructions)
    assert together.batch.anomaly_map.shape == (3, 1, 224, 168)
    for index, image in enumerate(images):
        alone = torch_model.inspect([image], instructions[:1])
        height, width = image.shape[-2:]
        assert torch.allclose(
            together.batch.anomaly_map[index, :, :height, :width], alone.batch.anomaly_map[0], atol=1e-5
        )
        assert together.batch.anomaly_map[index, :, height:].abs().sum() == 0
        assert together.batch.anomaly_map[index, :, :, width:].abs().sum() == 0
        assert float(together.batch.pred_score[index]) == pytest.approx(float(alone.batch.pred_score[0]), abs=1e-5)
        assert together.answers[index] == alone.answers[0]


def test_vision_features_equal_transformers_image_features_with_fewer_tower_views(torch_model: GenAUModel) -> None:
    model = torch_model.eval()
    torch.manual_seed(4)
    images = [torch.rand(3, 112, 112), torch.rand(3, 112, 224)]  # 1 x 1 grid (its tile is the global view), 1 x 2
    encoded = model.processor.image_processor(images=images, return_tensors="pt", do_rescale=False)
    tower_views = []
    model.llava.model.vision_tower.register_forward_hook(lambda _, args, __: tower_views.append(len(args[0])))
    with torch.no_grad():
        vision = model.see(images)
        reference = model.llava.model.get_image_features(
            encoded["pixel_values"], encoded["image_sizes"], output_hidden_states=True, return_dict=True
        )
    assert tower_views == [4, 5]  # 2 + 3 views, the square image's tile run once
    for features, expected in zip(vision.image_features, reference.pooler_output, strict=True):
        assert features.shape == expected.shape
        assert torch.allclose(features, expected, atol=1e-5)
    global_stages, tile_stages = split_views(
        model.llava, [reference.hidden_states[layer] for layer in model.vision_layers], encoded["image_sizes"]
    )
    for stage, expected in zip(vision.global_stages, global_stages, strict=True):
        assert torch.allclose(stage, expected, atol=1e-5)
    assert torch.allclose(vision.tile_stages[0][0], global_stages[0][:1], atol=1e-5)
    for stage, expected in zip(vision.tile_stages[1], tile_stages[1], strict=True):
        assert torch.allclose(stage, expected, atol=1e-5)


def test_prompts_encoded_apart_from_the_images_equal_the_processors(torch_model: GenAUModel) -> None:
    """The codec tokenizes only the text, its image tokens sized by the features: the processor's ids."""
    model = torch_model.eval()
    images = [torch.rand(3, 112, 112), torch.rand(3, 112, 224), torch.rand(3, 224, 140)]
    instructions = [PROMPTS[0], PROMPTS[1], "Describe the defect."]
    with torch.no_grad():
        prompts = model.prompts(model.see(images), instructions)
    chats = [model.codec.chat(text) for text in instructions]
    reference = model.processor(images=images, text=chats, return_tensors="pt", padding=True, do_rescale=False)
    assert torch.equal(prompts.input_ids, reference["input_ids"])
    assert torch.equal(prompts.attention_mask, reference["attention_mask"])
    assert int((prompts.input_ids == model.codec.image_token_id).sum()) > 3 * 196


def test_visual_token_budgets_shorten_what_the_decoder_reads_but_not_the_readout(tiny_backbone) -> None:
    """``global`` keeps the global view's tokens of ``anyres``; the pooled budgets are their 2 x 2 bilinear means."""
    torch.manual_seed(6)
    images = [torch.rand(3, 112, 224)]  # the global view and 1 x 2 tiles: 3 views of 14 x 14 patches
    seen = {}
    for budget in VISUAL_TOKENS:
        torch.manual_seed(0)
        model = GenAUModel(str(tiny_backbone), visual_tokens=budget).eval()
        with torch.no_grad():
            seen[budget] = model.see(images)
    patches, newline = 14 * 14, model.llava.model.image_newline
    assert seen["global"].token_counts == [patches + 1]
    assert seen["pooled"].token_counts == [3 * 7 * 7 + 1]
    assert seen["global_pooled"].token_counts == [7 * 7 + 1]
    assert seen["anyres"].token_counts[0] > 3 * patches
    global_view = seen["anyres"].image_features[0][:patches]
    assert torch.allclose(seen["global"].image_features[0][:patches], global_view)
    grid = global_view.reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    pooled = torch.nn.functional.avg_pool2d(grid, 2).permute(0, 2, 3, 1).reshape(7 * 7, -1)
    assert torch.allclose(seen["global_pooled"].image_features[0][:-1], pooled, atol=1e-5)
    assert torch.allclose(seen["pooled"].image_features[0][: 7 * 7], pooled, atol=1e-5)
    for budget, vision in seen.items():
        assert torch.equal(vision.image_features[0][-1], newline), budget
        for stage, expected in zip(vision.global_stages, seen["anyres"].global_stages, strict=True):
            assert torch.equal(stage, expected), budget
    with torch.no_grad():  # the last model built reads 50 tokens and still maps the whole image
        assert model.inspect(images).batch.anomaly_map.shape == (1, 1, 112, 224)
    with pytest.raises(ValueError, match="Unknown visual_tokens 'tiles'; use one of anyres, global, pooled"):
        GenAUModel(str(tiny_backbone), visual_tokens="tiles")
