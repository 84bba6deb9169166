"""Export a trained GenAU to OpenVINO IR: the graphs of ``graphs.py``, the processor and a manifest.

The export folder holds::

    genau.json                 manifest: configuration, token ids, sizes, files
    vision_tower.xml/.bin      SigLIP (one copy for every size)
    image_tokens_HxW.xml/.bin  projector and AnyRes packing, per exported size
    readout_HxW.xml/.bin       map, calibrated score and post-processing, per exported size
    embeddings.xml/.bin        token embeddings
    language_model.xml/.bin    the decoder, its KV cache kept in OpenVINO states
    processor/                 the LLaVA-OneVision processor (tokenizer, image processor)

LoRA and the new-token rows are merged into the weights before tracing and unmerged after.
Each IR carries the export's configuration id in its ``rt_info``, so files of two exports are
never mixed. Graphs are traced with ``torch.export`` (static image sizes make the AnyRes grid
a constant; TorchScript tracing fails on ``unpad_image``'s rounding) and converted with
``openvino.convert_model``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import torch
from anomalib.post_processing import PostProcessor
from openvino._offline_transformations import compress_model_transformation
from openvino.passes import MakeStateful, Manager
from torch.export import Dim

from .graphs import DecoderGraph, EmbeddingGraph, ImageTokensGraph, ReadoutGraph, VisionTowerGraph
from .quantization import calibration_samples, compress_weights, quantize

if TYPE_CHECKING:
    from anomalib_genau.models.genau.lightning_model import GenAU

logger = logging.getLogger(__name__)

MANIFEST = "genau.json"
# 2: the decoder keeps its KV cache in OpenVINO states; 3: it returns every new position's hidden state
FORMAT_VERSION = 3
# Weight formats of the export: f32, fp16 storage, NNCF INT8 (all graphs but the readout), NNCF
# INT4 (the decoder and embeddings; the vision graphs INT8), NNCF INT8 post-training quantization
# (weights and activations of the decoder; INT8 weights for the rest).
WEIGHT_FORMATS = ("f32", "fp16", "int8", "int4", "int8_ptq")
RT_INFO_KEY = ["genau", "config_id"]


def size_name(size: Sequence[int]) -> str:
    """``"384x384"``: the file-name suffix of an exported ``(H, W)``."""
    return f"{int(size[0])}x{int(size[1])}"


def _convert(module: torch.nn.Module, args: tuple, names: Sequence[str], dynamic_shapes: Any = None) -> ov.Model:
    """Trace ``module`` with ``torch.export``, convert it and name its inputs."""
    with torch.no_grad():
        program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
    model = ov.convert_model(program)
    for port, name in zip(model.inputs, names, strict=True):
        port.get_tensor().set_names({name})
    return model


def _name_outputs(model: ov.Model, names: Sequence[str]) -> ov.Model:
    for port, name in zip(model.outputs, names, strict=True):
        port.get_tensor().set_names({name})
    return model


def export_openvino(
    module: GenAU,
    export_root: str | Path,
    image_sizes: Sequence[Sequence[int]] | None = None,
    weights: str = "f32",
    calibration: Iterable[tuple[torch.Tensor, str | None]] | None = None,
) -> Path:
    """Write GenAU's OpenVINO export; returns the manifest's path.

    Args:
        module: A trained (calibrated, thresholded) GenAU module.
        export_root: Folder to write into (created).
        image_sizes: ``(H, W)`` sizes to export; images are resized to the one nearest in
            aspect ratio at inference. ``None``: the pre-processor's size (the size GenAU saw
            in training and testing), else the vision tower's tile size.
        weights: ``"f32"``, ``"fp16"`` (weights stored in fp16), ``"int8"`` (NNCF INT8 weights for
            every graph), ``"int4"`` (NNCF INT4 weights for the decoder, INT8 for the rest) or
            ``"int8_ptq"`` (NNCF INT8 weights and activations for the decoder, calibrated on
            ``calibration``; INT8 weights for the rest, the readout's in fp16).
        calibration: ``int8_ptq`` only: ``(image (3, H, W) in [0, 1], instruction or None)``
            pairs, pre-processed as in testing; a few images of the target product suffice.

    Raises:
        ValueError: Unknown ``weights``, ``int8_ptq`` without calibration images, an image
            size below one patch, or a module whose post-processor has no thresholds yet
            (never validated: every output would be NaN).

    """
    if weights not in WEIGHT_FORMATS:
        msg = f"Unknown weight format '{weights}'; use one of {', '.join(WEIGHT_FORMATS)}."
        raise ValueError(msg)
    if weights == "int8_ptq" and calibration is None:
        msg = "INT8 post-training quantization (int8_ptq) needs calibration images."
        raise ValueError(msg)
    post_processor = module.post_processor
    if not isinstance(post_processor, PostProcessor) or bool(torch.isnan(post_processor.image_threshold)):
        msg = (
            "GenAU's post-processor has no image threshold yet: export a model that has been validated "
            "(fitted with a validation split, as CrossDataset provides, or loaded from such a checkpoint)."
        )
        raise ValueError(msg)
    model = module.model
    sizes = [tuple(int(v) for v in size) for size in (image_sizes or [default_size(module)])]
    patch = model.llava.config.vision_config.patch_size
    for size in sizes:
        if len(size) != 2 or min(size) < patch:
            msg = f"Export size {size} must be (H, W) with both sides at least one patch ({patch} px)."
            raise ValueError(msg)
    root = Path(export_root)
    root.mkdir(parents=True, exist_ok=True)
    manifest = build_manifest(module, sizes, weights)
    was_training = model.training
    model.eval()
    model.vlm.merge_adapter()
    try:  # saved before unmerging: the converted graphs share their weights' memory with torch
        decoder_samples = calibration_samples(model, calibration) if weights == "int8_ptq" else None
        files = {}
        for name, traced in trace_graphs(module, sizes, manifest["score"]["fused"]).items():
            if weights != "f32":
                # fp16 storage (what ov.save_model's compress_to_fp16 does), before NNCF: save_model
                # skips a graph NNCF has compressed, which kept its other constants (norms, biases,
                # SigLIP's 3.4 MB position embeddings) in f32
                compress_model_transformation(traced)
            if name == "language_model" and decoder_samples:
                graph = quantize(traced, decoder_samples)
            elif weights in {"int8", "int4", "int8_ptq"} and not name.startswith("readout"):
                graph = compress_weights(traced, weights, language=name in {"language_model", "embeddings"})
            else:
                graph = traced
            graph.set_rt_info(manifest["config_id"], RT_INFO_KEY)
            path = root / f"{name}.xml"
            ov.save_model(graph, path, compress_to_fp16=False)
            files[name] = path.name
    finally:
        model.vlm.unmerge_adapter()
        model.train(was_training)
    model.processor.save_pretrained(root / "processor")
    manifest["files"] = files
    path = root / MANIFEST
    path.write_text(json.dumps(manifest, indent=2))
    logger.info("GenAU OpenVINO export written to %s", root)
    return path


def default_size(module: GenAU) -> tuple[int, int]:
    """The pre-processor's resize target, else the vision tower's tile size."""
    transform = getattr(module.pre_processor, "transform", None)
    size = getattr(transform, "size", None)
    if isinstance(size, Sequence) and len(size) == 2:
        return int(size[0]), int(size[1])
    return (module.model.tile_size,) * 2


def build_manifest(module: GenAU, sizes: Sequence[tuple[int, int]], weights: str) -> dict[str, Any]:
    """What the inferencer needs besides the graphs, and the configuration it must match."""
    from anomalib_genau.models.genau.lightning_model import ARCHITECTURE_ARGUMENTS, plain_value

    model = module.model
    config = model.llava.config
    configuration = {
        "backbone": str(module.hparams.backbone),
        "backbone_fingerprint": model.backbone_fingerprint,
        **{key: plain_value(module.hparams[key]) for key in ARCHITECTURE_ARGUMENTS},
        "high_res_readout": model.high_res_readout,
        "high_res_weight": model.high_res_weight,
        "score_fusion": model.score_fusion,
        "mixing_weight": model.calibration.mixing_weight,
    }
    config_id = hashlib.sha256(json.dumps(configuration, sort_keys=True).encode()).hexdigest()[:16]
    fused = bool(model.score_fusion and model.calibration.calibrated)
    if model.score_fusion and not fused:
        logger.warning("GenAU's score calibration is not estimated: the export scores by the map maximum.")
    if module.defect_type_mode == "likelihood":
        logger.warning("The OpenVINO inferencer answers defect types by generation (defect_type_mode='generate').")
    return {
        "format": FORMAT_VERSION,
        "config_id": config_id,
        "configuration": configuration,
        "weights": weights,
        "sizes": [list(size) for size in sizes],
        "tile_size": model.tile_size,
        "patch_size": config.vision_config.patch_size,
        "image_grid_pinpoints": config.image_grid_pinpoints,
        "tokens": {
            "seg_ids": list(model.seg_ids),
            "answer_ids": list(model.answer_ids),
            "banned_ids": list(model.banned_ids),
            "pad_id": model.pad_id,
            "image_token_id": config.image_token_id,
        },
        "max_new_tokens": model.max_new_tokens,
        "default_object": model.default_object,
        "defect_types": module.defect_type_mode is not None,
        "score": {"fused": fused},
    }


def trace_graphs(module: GenAU, sizes: Sequence[tuple[int, int]], fused_score: bool) -> dict[str, ov.Model]:
    """Trace and convert every graph on a probe image of each size (weights already merged)."""
    model = module.model
    config = model.llava.config
    graphs: dict[str, ov.Model] = {}
    views = Dim("views", min=1, max=64)
    tower = VisionTowerGraph(model)
    for index, size in enumerate(sizes):
        encoded = model.encode(torch.rand(1, 3, *size), None)
        pixel_values = encoded["pixel_values"][0]
        llm_features, stages = tower(pixel_values)
        if index == 0:
            graphs["vision_tower"] = _name_outputs(
                _convert(tower, (pixel_values,), ["pixel_values"], ({0: views},)), ["llm_features", "stage_features"]
            )
            embeds = EmbeddingGraph(model)
            graphs["embeddings"] = _name_outputs(
                _convert(embeds, (encoded["input_ids"],), ["input_ids"], ({1: Dim("tokens", min=1, max=32768)},)),
                ["inputs_embeds"],
            )
            graphs["language_model"] = _convert_decoder(model, embeds(encoded["input_ids"]))
        graphs[f"image_tokens_{size_name(size)}"] = _name_outputs(
            _convert(ImageTokensGraph(model, size), (llm_features,), ["llm_features"]), ["image_embeds"]
        )
        anchors = torch.randn(1, 2, config.text_config.hidden_size)
        readout = ReadoutGraph(model, module.post_processor, size, fused_score)
        graphs[f"readout_{size_name(size)}"] = _name_outputs(
            _convert(readout, (stages, anchors, torch.zeros(1)), ["stage_features", "anchors", "log_odds"]),
            ["pred_score", "pred_label", "anomaly_map", "pred_mask"],
        )
    return graphs


def cache_names(layers: int, prefix: str) -> list[str]:
    """``prefix.0.key``, ``prefix.0.value``, ``prefix.1.key``...: the decoder's KV-cache inputs or outputs."""
    return [f"{prefix}.{layer}.{kind}" for layer in range(layers) for kind in ("key", "value")]


def _convert_decoder(model: torch.nn.Module, embeds: torch.Tensor) -> ov.Model:
    """The stateful decoder graph, traced with a batch of 2 and a non-empty past so no dimension is specialised."""
    text = model.llava.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    layers, length, past = text.num_hidden_layers, 3, 2
    embeds = embeds[:, :length].expand(2, -1, -1).contiguous()
    # distinct tensors: torch.export would alias one tensor passed twice
    caches = [torch.zeros(2, text.num_key_value_heads, past, head_dim) for _ in range(2 * layers)]
    auto = Dim.AUTO
    graph = _convert(
        DecoderGraph(model),
        (
            embeds,
            torch.ones(2, past + length, dtype=torch.long),
            torch.arange(past, past + length).expand(2, -1),
            torch.arange(2),
            caches,
        ),
        ["inputs_embeds", "attention_mask", "position_ids", "beam_idx", *cache_names(layers, "past")],
        ({0: auto, 1: auto}, {0: auto, 1: auto}, {0: auto, 1: auto}, {0: auto}, [{0: auto, 2: auto}] * len(caches)),
    )
    _name_outputs(graph, ["logits", "hidden", *cache_names(layers, "present")])
    additive_attention_masks(graph)
    return make_stateful(graph, layers, text.num_key_value_heads, head_dim)


def additive_attention_masks(graph: ov.Model) -> None:
    """Give every attention a float mask (0, or the float minimum where masked) for transformers' boolean one.

    OpenVINO's CPU plugin runs its fused cached attention about 3x slower on a boolean mask: a
    1515-token prefill of the 0.5B decoder took 15 s with it and 5 s with the float mask
    (openvino 2026.4, 2 cores).
    """
    for node in graph.get_ordered_ops():
        if node.get_type_name() != "ScaledDotProductAttention" or node.get_input_size() < 4:
            continue
        mask = node.input_value(3)
        if mask.get_element_type() == ov.Type.boolean:
            additive = ops.select(mask, ops.constant(np.float32(0)), ops.constant(np.finfo(np.float32).min))
            node.input(3).replace_source_output(additive.output(0))
    graph.validate_nodes_and_infer_types()


def make_stateful(graph: ov.Model, layers: int, kv_heads: int, head_dim: int) -> ov.Model:
    """Keep the KV cache inside OpenVINO: each ``past``/``present`` pair becomes one state.

    Every ``reset_state`` starts the states as ``(B, kv_heads, 0, head_dim)``, ``B`` read from
    ``inputs_embeds``: the transformation alone leaves their shape unknown, which the CPU plugin
    cannot start from.
    """
    passes = Manager()
    passes.register_pass(
        MakeStateful(dict(zip(cache_names(layers, "past"), cache_names(layers, "present"), strict=True)))
    )
    passes.run_passes(graph)
    batch = ops.gather(
        ops.shape_of(graph.input("inputs_embeds"), output_type="i64"),
        ops.constant([0], dtype=np.int64),
        ops.constant(0, dtype=np.int64),
    )
    empty = ops.concat([batch, ops.constant([kv_heads, 0, head_dim], dtype=np.int64)], axis=0)
    for node in graph.get_ops():
        if node.get_type_name() == "ReadValue":
            node.set_arguments([ops.broadcast(ops.constant(0.0, dtype=node.get_output_element_type(0)), empty)])
    graph.validate_nodes_and_infer_types()
    return graph
