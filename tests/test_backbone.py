"""The tiny backbone is a real LLaVA-OneVision checkpoint; bad backbone paths fail clearly."""

import json
from pathlib import Path

import pytest
import torch
from transformers import LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor

from anomalib_genau.backbone import BackboneError, build_tiny_backbone, load_backbone


def test_tiny_backbone_has_the_real_classes_and_consistent_config(tiny_backbone: Path) -> None:
    model, processor = load_backbone(tiny_backbone)
    assert isinstance(model, LlavaOnevisionForConditionalGeneration)
    assert isinstance(processor, LlavaOnevisionProcessor)
    config = model.config
    tokenizer = processor.tokenizer
    assert config.image_token_index == tokenizer.convert_tokens_to_ids("<image>")
    assert config.vision_feature_select_strategy == "full"
    assert config.vision_aspect_ratio == "anyres_max_9"
    assert config.image_grid_pinpoints == processor.image_processor.image_grid_pinpoints
    vision = config.vision_config
    assert processor.num_image_tokens == (vision.image_size // vision.patch_size) ** 2
    assert all(side % vision.image_size == 0 for pinpoint in config.image_grid_pinpoints for side in pinpoint)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def test_tiny_backbone_runs_anyres_and_is_seeded(tiny_backbone: Path, tmp_path: Path) -> None:
    model, processor = load_backbone(tiny_backbone)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there any anomaly?"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    # a non-square image larger than one tile: global view + a grid of tiles
    inputs = processor(images=[torch.rand(3, 200, 300)], text=[prompt], return_tensors="pt", do_rescale=False)
    assert inputs["pixel_values"].shape[1] > 2
    logits = model(**inputs).logits
    assert torch.isfinite(logits).all()
    again, _ = load_backbone(build_tiny_backbone(tmp_path / "again"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match=r"does not exist"):
        load_backbone(tmp_path / "nowhere")


def test_directory_without_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match=r"no config\.json"):
        load_backbone(tmp_path)


def test_other_model_type_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(BackboneError, match=r"holds model_type 'bert'.*llava_onevision"):
        load_backbone(tmp_path)
