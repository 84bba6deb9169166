"""OpenVINO export and inference: parity with torch, compression tolerances, sizes and bad input."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.deploy import CompressionType

from anomalib_genau import prompts
from anomalib_genau.data.images import BrokenImageError
from anomalib_genau.data.synthetic import generate_mvtec_dataset
from anomalib_genau.deploy import ExportError, GenAUOpenVINOInferencer, export_openvino
from anomalib_genau.deploy.inferencer import shared_prefix_length
from anomalib_genau.deploy.manifest import FORMAT_VERSION
from anomalib_genau.deploy.quantization import output_matmul, quantization_samples
from anomalib_genau.models.genau import GenAU
from anomalib_genau.models.genau.export import export_configuration
from anomalib_genau.models.genau.torch_decoding import option_log_likelihoods
from anomalib_genau.taxonomy import product_candidates

SIZES = [(112, 112), (112, 224)]
# Documented tolerances against torch fp32 (README, "OpenVINO deployment").
F32_TOLERANCE, BF16_TOLERANCE, INT8_TOLERANCE, INT8_PTQ_TOLERANCE = 1e-3, 5e-2, 5e-2, 5e-2


@pytest.fixture(scope="module")
def trained_module(tiny_backbone: Path, as_trained: Callable[..., GenAU]) -> GenAU:
    return as_trained(tiny_backbone)


@pytest.fixture(scope="module")
def f32_export(trained_module: GenAU, tmp_path_factory: pytest.TempPathFactory) -> Path:
    module = trained_module
    root = tmp_path_factory.mktemp("ov") / "f32"
    configuration = export_configuration(module)
    return export_openvino(module.model, module.post_processor, configuration, root, SIZES).parent


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = generate_mvtec_dataset(
        tmp_path_factory.mktemp("ovdata"), seed=5, n_train=1, n_test_good=1, n_test_per_defect=1, image_size=224
    )
    return sorted((root / "carpet" / "test").rglob("*.png"))[:3]


def torch_reference(module: GenAU, image: torch.Tensor, size: tuple[int, int], category: str) -> dict:
    """What the torch module computes for an image resized to ``size``, prompted for ``category``."""
    from torchvision.transforms.v2.functional import resize

    pixels = resize(image, list(size), antialias=True).clamp(0, 1)[None]
    name = category.replace("_", " ")
    with torch.no_grad():
        inspection = module.model.inspect(pixels, [prompts.instruction(name)])
        batch = module.post_processor(inspection.batch)
        candidates = product_candidates("mvtec_ad", category)
        types = module.model.predict_types(
            inspection.vision, [prompts.type_instruction(name, candidates)], [candidates]
        )
    return {
        "score": float(batch.pred_score[0]),
        "label": bool(batch.pred_label[0]),
        "map": batch.anomaly_map[0, 0].numpy(),
        "mask": batch.pred_mask[0, 0].numpy(),
        "type": types.types[0],
        "answer": inspection.answers[0],
    }


def constant_types(node: ov.Node) -> set[ov.Type]:
    """The element types of the constants ``node`` is computed from."""
    types, stack = set(), [node]
    while stack:
        node = stack.pop()
        if node.get_type_name() == "Constant":
            types.add(node.get_element_type())
        stack.extend(value.get_node() for value in node.input_values())
    return types


def test_export_files_and_manifest(f32_export: Path) -> None:
    manifest = json.loads((f32_export / "genau.json").read_text())
    assert manifest["sizes"] == [list(size) for size in SIZES]
    assert manifest["score"]["fused"] is True
    expected = {
        "vision_tower",
        "embeddings",
        "language_model",
        *(f"{g}_{h}x{w}" for g in ("image_features", "readout") for h, w in SIZES),
    }
    assert set(manifest["files"]) == expected
    for name in expected:
        assert (f32_export / f"{name}.bin").stat().st_size > 0
    assert (f32_export / "processor" / "tokenizer.json").is_file()


def test_decoder_keeps_its_cache_in_fused_states(trained_module: GenAU, f32_export: Path) -> None:
    """No KV-cache inputs or outputs; the CPU plugin fuses each layer's state with its attention."""
    inferencer = GenAUOpenVINOInferencer(f32_export)
    decoder = inferencer.language_model
    inputs = {"inputs_embeds", "attention_mask", "position_ids", "beam_idx", "logits_positions"}
    assert {port.any_name for port in decoder.inputs} == inputs
    assert {port.any_name for port in decoder.outputs} == {"logits", "hidden"}
    layers = trained_module.model.llava.config.text_config.num_hidden_layers
    assert len(inferencer.decoder_request.query_state()) == 2 * layers
    runtime = [op.get_rt_info()["layerType"].astype(str) for op in decoder.get_runtime_model().get_ordered_ops()]
    # fused: one attention node per layer reading the cache, no separate softmax or attention matmuls
    assert runtime.count("ScaledDotProductAttention") == layers
    assert "Softmax" not in runtime and "MatMul" not in runtime
    # the float mask given: the fused attention is ~3x slower on a boolean one
    graph = ov.Core().read_model(f32_export / "language_model.xml")
    masks = [node.input_value(3) for node in graph.get_ops() if node.get_type_name() == "ScaledDotProductAttention"]
    assert len(masks) == layers
    assert all(mask.get_element_type() == ov.Type.f32 for mask in masks)


def test_f32_matches_torch_on_every_size(trained_module: GenAU, f32_export: Path, images: list[Path]) -> None:
    """Maps and scores within 1e-3, same labels, masks, defect types and answers, for both exported sizes."""
    from anomalib_genau.data.images import read_rgb

    inferencer = GenAUOpenVINOInferencer(f32_export)
    for path, crop in zip(images, [None, (100, 210), (60, 60)], strict=False):
        image = read_rgb(path)
        image = image if crop is None else image[:, : crop[0], : crop[1]]
        prediction = inferencer.predict(image, category="carpet")
        size = (112, 224) if crop == (100, 210) else (112, 112)
        assert prediction.input_size == size
        reference = torch_reference(trained_module, image, size, "carpet")
        assert prediction.anomaly_map.shape == size
        assert np.abs(prediction.anomaly_map - reference["map"]).max() < F32_TOLERANCE
        assert abs(prediction.pred_score - reference["score"]) < F32_TOLERANCE
        assert prediction.pred_label == reference["label"]
        near_threshold = np.abs(reference["map"] - 0.5) < F32_TOLERANCE
        assert (prediction.pred_mask == reference["mask"])[~near_threshold].all()
        assert prediction.pred_defect_type == reference["type"]
        assert prediction.explanation == reference["answer"]


def test_torch_predict_and_openvino_read_a_file_alike(
    trained_module: GenAU, f32_export: Path, images: list[Path], tmp_path: Path
) -> None:
    """16-bit, palette, RGBA and EXIF-rotated files: ``anomalib predict`` and OpenVINO see the same pixels."""
    from anomalib.engine import Engine
    from PIL import Image

    from anomalib_genau.data.images import read_rgb

    folder = tmp_path / "camera"
    folder.mkdir()
    source = Image.open(images[1]).convert("RGB").resize((112, 112))  # the module's input size: no resize
    upright = np.asarray(source, dtype=np.float32) / 255
    gray = (np.asarray(source.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)  # 16-bit, full range
    Image.fromarray(gray).save(folder / "a_gray16.png")
    source.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(folder / "b_palette.png")
    rgba = source.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "c_rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the stored pixels are shown rotated 90 degrees clockwise
    source.transpose(Image.Transpose.ROTATE_90).save(folder / "d_rotated.png", exif=exif)

    expected = {
        "a_gray16.png": np.repeat((gray / 65535.0)[..., None], 3, axis=-1),  # not saturated to white
        "b_palette.png": np.asarray(Image.open(folder / "b_palette.png").convert("RGB"), dtype=np.float32) / 255,
        "c_rgba.png": upright,  # alpha dropped, colour kept
        "d_rotated.png": upright,  # shown upright
    }
    for name, pixels in expected.items():
        assert np.abs(read_rgb(folder / name).permute(1, 2, 0).numpy() - pixels).max() < 1e-6, name
    assert float(read_rgb(folder / "a_gray16.png").mean()) < 0.9

    engine = Engine(default_root_dir=tmp_path / "run", logger=False)
    batches = engine.predict(model=trained_module, data_path=folder, return_predictions=True)
    read_by_torch = {Path(path).name: batch.image[i] for batch in batches for i, path in enumerate(batch.image_path)}
    assert sorted(read_by_torch) == sorted(expected)
    inferencer = GenAUOpenVINOInferencer(f32_export)
    for name, image in read_by_torch.items():
        assert np.abs(image.permute(1, 2, 0).numpy() - expected[name]).max() < 1e-6, name
        prediction = inferencer.predict(folder / name, category="carpet")  # the file, read by the inferencer
        reference = torch_reference(trained_module, image, (112, 112), "carpet")
        assert np.abs(prediction.anomaly_map - reference["map"]).max() < F32_TOLERANCE, name
        assert abs(prediction.pred_score - reference["score"]) < F32_TOLERANCE, name
        assert prediction.explanation == reference["answer"], name


def test_a_visual_token_budget_is_exported_with_its_model(
    tiny_backbone: Path, as_trained: Callable[..., GenAU], images: list[Path], tmp_path: Path
) -> None:
    """The export's decoder reads the budget's tokens, as torch does; a checkpoint of another budget is refused."""
    from anomalib_genau.data.images import read_rgb

    module = as_trained(tiny_backbone, visual_tokens="global_pooled")
    root = export_openvino(module.model, module.post_processor, export_configuration(module), tmp_path, [SIZES[0]])
    inferencer = GenAUOpenVINOInferencer(root.parent)
    image = read_rgb(images[1])
    assert len(inferencer.see(inferencer.prepare(image))[0]) == 7 * 7 + 1
    prediction = inferencer.predict(image, category="carpet")
    reference = torch_reference(module, image, SIZES[0], "carpet")
    assert np.abs(prediction.anomaly_map - reference["map"]).max() < F32_TOLERANCE
    assert prediction.explanation == reference["answer"]
    with pytest.raises(ExportError, match=r"made with visual_tokens=.global_pooled.*expects visual_tokens=.anyres."):
        GenAUOpenVINOInferencer(root.parent, expected_configuration={"visual_tokens": "anyres"})


def test_questions_on_one_image_share_their_prefill(f32_export: Path, images: list[Path]) -> None:
    """Both questions' prompts go through one decoder pass, their beginning once; each is answered as if alone."""
    inferencer = GenAUOpenVINOInferencer(f32_export)
    passes = []
    infer = inferencer._infer
    inferencer._infer = lambda embeds, *args: passes.append(embeds.shape[1]) or infer(embeds, *args)
    pixels = inferencer.prepare(images[0])
    questions = [prompts.instruction("carpet"), prompts.type_instruction("carpet", ["hole", "cut", "color"])]
    image_features, _ = inferencer.see(pixels)
    prompt_ids = [inferencer.codec.prompts([question], [len(image_features)]).input_ids for question in questions]
    shared = shared_prefix_length(prompt_ids)
    image_tokens = int((prompt_ids[0] == inferencer.codec.image_token_id).sum())
    assert image_tokens == len(image_features) < shared < min(ids.shape[1] for ids in prompt_ids)
    together = inferencer._decode(prompt_ids, [image_features])
    assert passes[0] == sum(ids.shape[1] for ids in prompt_ids) - shared  # one prefill pass, shared part once
    assert all(length <= 2 for length in passes[1:])  # then decoding steps only
    alone = [inferencer._decode([ids], [image_features])[0] for ids in prompt_ids]
    for shared_result, alone_result in zip(together, alone, strict=True):
        assert torch.equal(shared_result.tokens, alone_result.tokens)
        assert torch.allclose(shared_result.anchors, alone_result.anchors, atol=1e-4)
        assert torch.allclose(shared_result.first_logits, alone_result.first_logits, atol=1e-4)


def test_a_draft_is_read_as_decoding_steps_read_it(f32_export: Path, images: list[Path]) -> None:
    """The greedy answer fed as a draft after the prompt: its logits and states are the decoding steps'.

    It then stands for the decoding unless the budget forced its end (``drafted_decode``): the
    same tokens, and ``forced`` as decoded.
    """
    inferencer = GenAUOpenVINOInferencer(f32_export)
    outputs = []
    step = inferencer._step
    inferencer._step = lambda *args: outputs.append(step(*args)) or outputs[-1]
    for path in images[:2]:
        image_features, _ = inferencer.see(inferencer.prepare(path))
        prompt_ids = inferencer.codec.prompts([prompts.instruction("carpet")], [len(image_features)]).input_ids
        outputs.clear()
        (greedy,) = inferencer._decode([prompt_ids], [image_features])
        steps = list(outputs)  # one per answer token, then the segmentation pair
        ids = greedy.tokens[0].tolist()
        assert ids[-2:] == [inferencer.codec.seg_ids.defect, inferencer.codec.seg_ids.normal]
        assert len(steps) == len(ids) - 1
        prefill = inferencer._prefill([prompt_ids], [image_features], drafts=[[ids]])
        (draft,) = prefill.questions[0].drafts
        assert torch.allclose(prefill.questions[0].logits, greedy.first_logits, atol=1e-4)
        assert torch.allclose(draft.logits, torch.stack([logits for logits, _ in steps[:-1]], dim=1), atol=1e-4)
        assert torch.allclose(draft.states, torch.cat([states for _, states in steps], dim=1), atol=1e-4)
        outputs.clear()
        decoded = inferencer._greedy(prefill.questions[0])
        assert torch.equal(decoded.tokens, greedy.tokens) and torch.equal(decoded.forced, greedy.forced)
        assert torch.allclose(decoded.anchors, greedy.anchors, atol=1e-4)
        assert bool(outputs) == bool(greedy.forced.any())  # decoded only where the budget forced the end


def test_a_batch_answers_each_image_as_alone(f32_export: Path, images: list[Path]) -> None:
    """``predict_batch`` shares the decoder's passes between images of one size and keeps their order."""
    inferencer = GenAUOpenVINOInferencer(f32_export)
    wide = torch.rand(3, 100, 210, generator=torch.Generator().manual_seed(0))  # the other exported size
    batch = [images[0], wide, images[1], images[2]]
    together = inferencer.predict_batch(batch, category="carpet")
    alone = [inferencer.predict(image, category="carpet") for image in batch]
    assert [p.input_size for p in together] == [(112, 112), (112, 224), (112, 112), (112, 112)]
    assert len({p.pred_score for p in together}) == len(batch)  # distinct images, distinct answers
    for shared, single in zip(together, alone, strict=True):
        assert abs(shared.pred_score - single.pred_score) < 1e-5
        assert np.abs(shared.anomaly_map - single.anomaly_map).max() < 1e-4
        assert (shared.explanation, shared.pred_defect_type) == (single.explanation, single.pred_defect_type)


def test_without_the_type_question_the_other_answers_are_the_same(f32_export: Path, images: list[Path]) -> None:
    """``defect_type=False`` drops the type question's decoder passes and changes no other answer."""
    inferencer = GenAUOpenVINOInferencer(f32_export)
    passes = []
    answer = inferencer._infer
    inferencer._infer = lambda embeds, *args: passes.append(embeds.shape[1]) or answer(embeds, *args)
    for image in images[:2]:
        passes.clear()
        both = inferencer.predict(image, category="carpet")
        asked = list(passes)
        passes.clear()
        binary = inferencer.predict(image, category="carpet", defect_type=False)
        assert binary.pred_defect_type is None and both.pred_defect_type is not None
        assert (binary.explanation, binary.pred_label) == (both.explanation, both.pred_label)
        assert abs(binary.pred_score - both.pred_score) < 1e-5
        assert np.abs(binary.anomaly_map - both.anomaly_map).max() < 1e-4
        # no type prompt in the prefill, no type answer after it
        assert passes[0] < asked[0] and len(passes) < len(asked)
        assert sum(passes) < sum(asked)


def test_openvino_properties_given_compile_every_graph(f32_export: Path, images: list[Path]) -> None:
    """``config`` reaches every compiled graph; one thread answers as two do."""
    default = GenAUOpenVINOInferencer(f32_export)
    inferencer = GenAUOpenVINOInferencer(f32_export, config={"INFERENCE_NUM_THREADS": 1})
    graphs = [inferencer.vision_tower, inferencer.embeddings, inferencer.language_model]
    graphs += [*inferencer.image_features.values(), *inferencer.readouts.values()]
    assert [graph.get_property("INFERENCE_NUM_THREADS") for graph in graphs] == [1] * len(graphs)
    assert inferencer.language_model.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32  # GenAU's own kept
    one_thread, two = inferencer.predict(images[0]), default.predict(images[0])
    assert np.abs(one_thread.anomaly_map - two.anomaly_map).max() < 1e-5
    assert one_thread.explanation == two.explanation


def test_bf16_within_documented_tolerance(trained_module: GenAU, f32_export: Path, images: list[Path]) -> None:
    from anomalib_genau.data.images import read_rgb

    inferencer = GenAUOpenVINOInferencer(f32_export, precision="bf16")
    image = read_rgb(images[0])
    prediction = inferencer.predict(image, category="carpet")
    reference = torch_reference(trained_module, image, (112, 112), "carpet")
    assert np.abs(prediction.anomaly_map - reference["map"]).max() < BF16_TOLERANCE
    assert abs(prediction.pred_score - reference["score"]) < BF16_TOLERANCE


def test_int8_through_anomalib_export(
    trained_module: GenAU, f32_export: Path, images: list[Path], tmp_path: Path
) -> None:
    """``to_openvino`` (what ``anomalib export`` calls) with INT8: half the IR, outputs within tolerance."""
    from anomalib_genau.data.images import read_rgb

    manifest = trained_module.to_openvino(tmp_path, compression_type=CompressionType.INT8)
    assert manifest == tmp_path / "weights" / "openvino" / "genau.json"
    assert json.loads(manifest.read_text())["weights"] == "int8"
    int8_bytes = sum(p.stat().st_size for p in manifest.parent.glob("*.bin"))
    f32_bytes = sum(p.stat().st_size for p in f32_export.glob("*.bin") if "224" not in p.name)
    assert int8_bytes < 0.5 * f32_bytes
    for graph in manifest.parent.glob("*.xml"):  # no f32 matrix or table: what NNCF leaves is stored in fp16
        f32_shapes = [
            list(op.get_output_shape(0))
            for op in ov.Core().read_model(graph).get_ops()
            if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.f32
        ]
        assert all(sum(side > 1 for side in shape) <= 1 for shape in f32_shapes), (graph.name, f32_shapes)
    image = read_rgb(images[1])
    prediction = GenAUOpenVINOInferencer(manifest).predict(image, category="carpet")
    reference = torch_reference(trained_module, image, (112, 112), "carpet")
    assert np.abs(prediction.anomaly_map - reference["map"]).max() < INT8_TOLERANCE
    assert abs(prediction.pred_score - reference["score"]) < INT8_TOLERANCE


def test_quantization_captures_the_inputs_the_inferencer_feeds_the_graphs(
    trained_module: GenAU, f32_export: Path, images: list[Path]
) -> None:
    """INT8 PTQ calibrates the decoder on what the inferencer feeds it: the prompt, then the answer and its anchors.

    One sequence: the prefill's embeddings (its prompt; the draft answers after it are left out)
    and each decoding step's, the segmentation tokens (whose states are the anchors) last.
    """
    inferencer = GenAUOpenVINOInferencer(f32_export)
    fed = []
    infer = inferencer._infer
    inferencer._infer = lambda *inputs: fed.append(inputs) or infer(*inputs)
    pixels = inferencer.prepare(images[0])
    inferencer.predict(pixels)  # no category: one question, the default object
    (sample,) = quantization_samples(trained_module.model, [(pixels, None)])
    prompt_length = sample["inputs_embeds"].shape[1] - sum(inputs[0].shape[1] for inputs in fed[1:])
    embeds = np.concatenate([fed[0][0][:, :prompt_length], *(inputs[0] for inputs in fed[1:])], axis=1)
    assert len(fed) > 2 and fed[0][0].shape[1] > prompt_length  # the drafts were fed, and not taken
    assert sample["inputs_embeds"].shape == embeds.shape
    assert np.abs(sample["inputs_embeds"] - embeds).max() < 1e-5
    seg_ids = inferencer.codec.seg_ids
    seg_embeds = inferencer.embeddings([np.array([[seg_ids.defect, seg_ids.normal]])])[0]
    assert np.abs(sample["inputs_embeds"][:, -2:] - seg_embeds).max() < 1e-5
    total = embeds.shape[1]
    causal = np.where(np.tril(np.ones((total, total), dtype=bool)), 0, np.finfo(np.float32).min)
    assert np.array_equal(sample["attention_mask"], causal[None, None])
    assert np.array_equal(sample["position_ids"], np.arange(total)[None])
    assert np.array_equal(sample["beam_idx"], [0]) and np.array_equal(sample["logits_positions"], [total - 1])
    with pytest.raises(ValueError, match="at least one quantization image"):
        quantization_samples(trained_module.model, [])


def test_int8_ptq_through_anomalib_export_calibrates_on_the_datamodule(
    trained_module: GenAU, f32_export: Path, images: list[Path], tmp_path: Path
) -> None:
    """``anomalib export --compression_type INT8_PTQ``: INT8 activations in the decoder, its attention left in
    floating point (fused with the cache), INT8 weights elsewhere, under half the f32 IR, outputs within tolerance."""
    from anomalib_genau.data.images import read_rgb

    with pytest.raises(ValueError, match="needs a datamodule"):
        trained_module.to_openvino(tmp_path, compression_type=CompressionType.INT8_PTQ)
    datamodule = MVTecAD(root=images[0].parents[3], category="carpet", eval_batch_size=2, num_workers=0)
    manifest = trained_module.to_openvino(tmp_path, compression_type=CompressionType.INT8_PTQ, datamodule=datamodule)
    assert json.loads(manifest.read_text())["weights"] == "int8_ptq"
    for name, quantized in {"vision_tower": False, "language_model": True, "embeddings": False}.items():
        graph = ov.Core().read_model(manifest.parent / f"{name}.xml")
        assert any(node.get_type_name() == "FakeQuantize" for node in graph.get_ops()) == quantized, name
        attention = [node for node in graph.get_ops() if node.get_type_name() == "ScaledDotProductAttention"]
        for node in attention:
            assert all(value.get_node().get_type_name() != "FakeQuantize" for value in node.input_values()), name
    decoder = ov.Core().read_model(manifest.parent / "language_model.xml")
    head_name = output_matmul(decoder, "logits")
    head = next(node for node in decoder.get_ops() if node.get_friendly_name() == head_name)
    activations, weights = (value.get_node() for value in head.input_values())
    assert activations.get_type_name() != "FakeQuantize"  # the LM head reads float activations ...
    assert ov.Type.u8 in constant_types(weights)  # ... and INT8 weights
    ptq_bytes = sum(p.stat().st_size for p in manifest.parent.glob("*.bin"))
    f32_bytes = sum(p.stat().st_size for p in f32_export.glob("*.bin") if "224" not in p.name)
    assert ptq_bytes < 0.5 * f32_bytes
    inferencer = GenAUOpenVINOInferencer(manifest)
    runtime = [
        op.get_rt_info()["layerType"].astype(str)
        for op in inferencer.language_model.get_runtime_model().get_ordered_ops()
    ]
    assert runtime.count("ScaledDotProductAttention") == trained_module.model.llava.config.text_config.num_hidden_layers
    for path in images[1:]:
        image = read_rgb(path)
        prediction = inferencer.predict(image, category="carpet")
        reference = torch_reference(trained_module, image, (112, 112), "carpet")
        assert np.abs(prediction.anomaly_map - reference["map"]).max() < INT8_PTQ_TOLERANCE
        assert abs(prediction.pred_score - reference["score"]) < INT8_PTQ_TOLERANCE
        assert prediction.pred_label == reference["label"]
        assert prediction.explanation == reference["answer"]
        assert prediction.pred_defect_type == reference["type"]


def test_int8_ptq_tower_quantizes_the_tower_but_its_patch_embedding(
    trained_module: GenAU, images: list[Path], tmp_path: Path
) -> None:
    """``int8_ptq_tower``: INT8 activations in the vision tower too, the pixels the patch embedding reads left in
    floating point; maps within tolerance, labels and types as torch."""
    from anomalib_genau.data.images import read_rgb

    quantization = [(trained_module.pre_processed(read_rgb(path)[None])[0], None) for path in images]
    manifest = trained_module.export_openvino(tmp_path, weights="int8_ptq_tower", quantization_images=quantization)
    assert json.loads(manifest.read_text())["weights"] == "int8_ptq_tower"
    tower = ov.Core().read_model(manifest.parent / "vision_tower.xml")
    fed_by = {
        node.get_type_name(): {value.get_node().get_type_name() for value in node.input_values()}
        for node in tower.get_ops()
        if node.get_type_name() in {"Convolution", "MatMul", "ScaledDotProductAttention"}
    }
    assert "FakeQuantize" in fed_by["MatMul"]
    assert "FakeQuantize" not in fed_by["Convolution"] | fed_by["ScaledDotProductAttention"]
    inferencer = GenAUOpenVINOInferencer(manifest)
    for path in images:
        image = read_rgb(path)
        prediction = inferencer.predict(image, category="carpet")
        reference = torch_reference(trained_module, image, (112, 112), "carpet")
        assert np.abs(prediction.anomaly_map - reference["map"]).max() < INT8_PTQ_TOLERANCE
        assert prediction.pred_label == reference["label"]
        assert prediction.pred_defect_type == reference["type"]


def test_export_refuses_what_it_cannot_do(trained_module: GenAU, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not 'int8_acq'"):
        trained_module.to_openvino(tmp_path, compression_type=CompressionType.INT8_ACQ)
    with pytest.raises(ValueError, match="needs quantization images"):
        trained_module.export_openvino(tmp_path, weights="int8_ptq")
    with pytest.raises(ValueError, match="needs quantization images"):
        trained_module.export_openvino(tmp_path, weights="int8_ptq_tower")
    with pytest.raises(NotImplementedError, match="openvino"):
        trained_module.to_onnx(tmp_path)
    with pytest.raises(ValueError, match="Unknown weight format"):
        trained_module.export_openvino(tmp_path, weights="int3")
    with pytest.raises(ValueError, match="at least one patch"):
        trained_module.export_openvino(tmp_path, [(4, 112)])


def test_bad_images_get_errors_that_name_them(f32_export: Path, tmp_path: Path) -> None:
    inferencer = GenAUOpenVINOInferencer(f32_export)
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image")
    with pytest.raises(BrokenImageError, match=r"notes\.png"):
        inferencer.predict(text_file)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        inferencer.predict(np.zeros((64, 64, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="smaller than one 8-pixel patch"):
        inferencer.predict(np.zeros((5, 64, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="Unknown dataset"):
        inferencer.predict(np.zeros((64, 64), dtype=np.uint8), category="carpet", dataset="Kolektor")
    gray = inferencer.predict(np.full((64, 80), 128, dtype=np.uint8), category="widget")  # unknown product: no type
    assert gray.pred_defect_type is None
    assert gray.anomaly_map.shape == (112, 112)


def test_broken_or_mixed_exports_are_refused(f32_export: Path, tmp_path: Path) -> None:
    missing = shutil.copytree(f32_export, tmp_path / "missing")
    (missing / "language_model.bin").unlink()
    with pytest.raises(ExportError, match=r"missing language_model\.bin"):
        GenAUOpenVINOInferencer(missing)
    corrupt = shutil.copytree(f32_export, tmp_path / "corrupt")
    (corrupt / "vision_tower.xml").write_text("<net><broken")
    with pytest.raises(ExportError, match=r"vision_tower\.xml"):
        GenAUOpenVINOInferencer(corrupt)
    with pytest.raises(ExportError, match=r"genau\.json is missing"):
        GenAUOpenVINOInferencer(tmp_path)
    mixed = shutil.copytree(f32_export, tmp_path / "mixed")
    manifest = json.loads((mixed / "genau.json").read_text())
    manifest["config_id"] = "0123456789abcdef"
    (mixed / "genau.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="configuration 0123456789abcdef"):
        GenAUOpenVINOInferencer(mixed)
    with pytest.raises(ExportError, match=r"lora_rank=8.*expects lora_rank=16"):
        GenAUOpenVINOInferencer(f32_export, expected_configuration={"lora_rank": 16})
    older = shutil.copytree(f32_export, tmp_path / "older")
    manifest = json.loads((older / "genau.json").read_text())
    manifest["format"] = 2  # its decoder returned the last position's hidden state only
    (older / "genau.json").write_text(json.dumps(manifest))
    expected = rf"format 2, this anomalib-genau reads format {FORMAT_VERSION}: export the checkpoint again"
    with pytest.raises(ExportError, match=expected):
        GenAUOpenVINOInferencer(older)


def test_export_refuses_a_model_without_thresholds(tiny_backbone: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no image threshold"):
        GenAU(backbone=str(tiny_backbone)).export_openvino(tmp_path)


TRAINING_STACK = ("lightning", "peft", "anomalib.models", "anomalib_genau.models.genau.lightning_model")


def test_deployment_loads_no_training_stack(f32_export: Path, images: list[Path]) -> None:
    """A fresh interpreter imports the deploy package and answers an image without Lightning or peft."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from anomalib_genau.deploy import GenAUOpenVINOInferencer\n"
        f"prediction = GenAUOpenVINOInferencer({str(f32_export)!r}).predict({str(images[0])!r}, category='carpet')\n"
        "assert prediction.pred_defect_type is not None\n"
        f"print(sorted(name for name in {TRAINING_STACK!r} if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_types_by_likelihood_score_the_options_as_torch(
    tiny_backbone: Path, as_trained: Callable[..., GenAU], images: list[Path], tmp_path: Path
) -> None:
    """``defect_type_mode="likelihood"`` is exported: each option's log-likelihood as torch's, the same choice."""
    module = as_trained(tiny_backbone, defect_type_mode="likelihood")
    configuration = export_configuration(module)
    root = export_openvino(module.model, module.post_processor, configuration, tmp_path / "export", [SIZES[0]])
    inferencer = GenAUOpenVINOInferencer(root.parent)
    assert inferencer.type_mode == "likelihood"
    candidates = ["hole", "cut", "color"]
    question = prompts.type_instruction("carpet", candidates)
    options = inferencer.codec.type_options(candidates)
    option_ids = inferencer.codec.option_ids(options)
    for path in images:
        pixels = inferencer.prepare(path)
        image_features, _ = inferencer.see(pixels)
        prompt_ids = inferencer.codec.prompts([question], [len(image_features)]).input_ids
        (scores,) = inferencer._prefill([prompt_ids], [image_features], option_ids).option_scores
        # after the binary prompt in the same pass, which the options do not read: the same scores
        binary_ids = inferencer.codec.prompts([prompts.instruction("carpet")], [len(image_features)]).input_ids
        both = inferencer._prefill([binary_ids, prompt_ids], [image_features], option_ids).option_scores
        np.testing.assert_allclose(both[0], scores, atol=1e-4)
        with torch.no_grad():
            vision = module.model.see(pixels[None])
            prefill = module.model.prefill_inputs(module.model.prompts(vision, [question]), vision)
            (expected,) = option_log_likelihoods(module.model.llava, prefill, [option_ids], module.model.codec.pad_id)
            reference = module.model.predict_types(vision, [question], [candidates], mode="likelihood")
        np.testing.assert_allclose(scores, expected.numpy(), atol=F32_TOLERANCE)
        prediction = inferencer.predict(pixels, category="carpet", candidates=candidates)
        assert prediction.pred_defect_type == reference.types[0] == options[int(scores.argmax())]
    together = inferencer.predict_batch(images, category="carpet", candidates=candidates)
    alone = [inferencer.predict(path, category="carpet", candidates=candidates) for path in images]
    assert [p.pred_defect_type for p in together] == [p.pred_defect_type for p in alone]
    assert len(option_ids) == 4 and all(len(ids) > 1 for ids in option_ids)  # multi-token options: steps are fed


def test_a_loaded_export_leaves_its_weight_files_unresident(f32_export: Path) -> None:
    """The CPU plugin keeps its own copy of the weights; the mapped files' pages are given back after loading.

    (Every test of the inferencer's outputs runs on such an inferencer.)
    """
    from test_deploy_memory import resident_bytes

    inferencer = GenAUOpenVINOInferencer(f32_export)  # held: its graphs keep the files mapped
    weight_files = sorted(f32_export.glob("*.bin"))
    on_disk = sum(path.stat().st_size for path in weight_files)
    assert sum(resident_bytes(path) for path in weight_files) < 0.05 * on_disk
    assert inferencer.language_model.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
