"""Export a trained GenAU to OpenVINO IR: the graphs of ``graphs.py``, the processor and a manifest.

The export folder holds::

    genau.json                 manifest: configuration, token ids, sizes, files
    vision_tower.xml/.bin      SigLIP (one copy for every size)
    image_features_HxW.xml/.bin  projector and AnyRes packing, per exported size
    readout_HxW.xml/.bin       map, calibrated score and post-processing, per exported size
    embeddings.xml/.bin        token embeddings
    language_model.xml/.bin    the decoder, its KV cache kept in OpenVINO states
    processor/                 the LLaVA-OneVision processor (tokenizer, image processor)

The inferencer derives every token id from the saved processor with the same dialogue codec
as the torch model, so the manifest holds no copies of them.

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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import torch
from anomalib.deploy import CompressionType
from anomalib.post_processing import PostProcessor
from openvino._offline_transformations import compress_model_transformation
from openvino.passes import MakeStateful, Manager
from torch.export import Dim

from anomalib_genau.choices import QUANTIZED_GRAPHS
from anomalib_genau.models.genau.torch_model import GenAUModel

from .graphs import DecoderGraph, EmbeddingGraph, ImageFeaturesGraph, ReadoutGraph, VisionTowerGraph
from .manifest import FORMAT_VERSION, MANIFEST, RT_INFO_KEY, WEIGHT_FORMATS, size_name
from .quantization import FLOAT_SCOPES, calibration_samples, compress_weights, quantize

logger = logging.getLogger(__name__)


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


# anomalib's export compression types and the weight formats they give GenAU's graphs
# (INT4 is only offered by `anomalib-genau export --weights int4`; INT8_ACQ needs one graph
# with one metric, which GenAU's decode loop does not have)
COMPRESSION_WEIGHTS = {
    None: "f32",
    CompressionType.FP16: "fp16",
    CompressionType.INT8: "int8",
    CompressionType.INT8_PTQ: "int8_ptq",
}


def export_weights(compression_type: CompressionType | str | None) -> str:
    """The weight format of anomalib's ``--compression_type``.

    Raises:
        ValueError: A compression type GenAU does not support (``INT8_ACQ``).

    """
    compression = CompressionType(compression_type) if compression_type else None
    if compression not in COMPRESSION_WEIGHTS:
        msg = (
            f"GenAU supports OpenVINO compression fp16, int8, int8_ptq (and int4 and int8_ptq_tower through "
            f"`anomalib-genau export`), not '{compression.value}'."
        )
        raise ValueError(msg)
    return COMPRESSION_WEIGHTS[compression]


def quantization_images(
    dataloader: Iterable[Any], transform: Callable[[torch.Tensor], torch.Tensor], count: int
) -> list[tuple[torch.Tensor, str | None]]:
    """The first ``count`` images of ``dataloader``'s batches, through ``transform``, with their instructions."""
    images: list[tuple[torch.Tensor, str | None]] = []
    for batch in dataloader:
        pixels = transform(batch.image)
        instructions = getattr(batch, "instruction", None) or [None] * len(pixels)
        images.extend(zip(pixels, instructions, strict=True))
        if len(images) >= count:
            break
    return images[:count]


def export_openvino(
    model: GenAUModel,
    post_processor: PostProcessor,
    configuration: Mapping[str, Any],
    export_root: str | Path,
    image_sizes: Sequence[Sequence[int]] | None = None,
    weights: str = "f32",
    quantization_images: Iterable[tuple[torch.Tensor, str | None]] | None = None,
) -> Path:
    """Write GenAU's OpenVINO export; returns the manifest's path.

    Args:
        model: A trained (calibrated) GenAU torch model.
        post_processor: anomalib's post-processor with the validated thresholds and normalisation.
        configuration: What the export must agree on with a checkpoint: ``backbone``, the
            architecture arguments (``checkpoint.ARCHITECTURE_ARGUMENTS``) and ``defect_type_mode``.
        export_root: Folder to write into (created).
        image_sizes: ``(H, W)`` sizes to export; images are resized to the one nearest in
            aspect ratio at inference. ``None``: the vision tower's tile size.
        weights: ``"f32"``, ``"fp16"`` (weights stored in fp16), ``"int8"`` (NNCF INT8 weights for
            every graph), ``"int4"`` (NNCF INT4 weights for the decoder, INT8 for the rest) or
            ``"int8_ptq"`` (NNCF INT8 weights and activations for the decoder, quantized on
            ``quantization_images``; INT8 weights for the rest, the readout's in fp16) or
            ``"int8_ptq_tower"`` (as ``int8_ptq``, and INT8 activations in the vision tower but
            for its patch embedding).
        quantization_images: ``int8_ptq`` and ``int8_ptq_tower`` only: ``(image (3, H, W) in
            [0, 1], instruction or None)`` pairs, pre-processed as in testing; a few images of
            the target product suffice.

    Raises:
        ValueError: Unknown ``weights``, quantization without quantization images, an image
            size below one patch, or a post-processor without thresholds yet (never validated:
            every output would be NaN).

    """
    if weights not in WEIGHT_FORMATS:
        msg = f"Unknown weight format '{weights}'; use one of {', '.join(WEIGHT_FORMATS)}."
        raise ValueError(msg)
    if weights in QUANTIZED_GRAPHS and quantization_images is None:
        msg = f"INT8 post-training quantization ({weights}) needs quantization images."
        raise ValueError(msg)
    if not isinstance(post_processor, PostProcessor) or bool(torch.isnan(post_processor.image_threshold)):
        msg = (
            "GenAU's post-processor has no image threshold yet: export a model that has been validated "
            "(fitted with a validation split, as CrossDataset provides, or loaded from such a checkpoint)."
        )
        raise ValueError(msg)
    sizes = [tuple(int(v) for v in size) for size in (image_sizes or [(model.tile_size,) * 2])]
    patch = model.llava.config.vision_config.patch_size
    for size in sizes:
        if len(size) != 2 or min(size) < patch:
            msg = f"Export size {size} must be (H, W) with both sides at least one patch ({patch} px)."
            raise ValueError(msg)
    root = Path(export_root)
    root.mkdir(parents=True, exist_ok=True)
    manifest = build_manifest(model, configuration, sizes, weights)
    was_training = model.training
    model.eval()
    model.vlm.merge_adapter()
    try:  # saved before unmerging: the converted graphs share their weights' memory with torch
        samples = calibration_samples(model, quantization_images or [], weights)
        files = {}
        # one graph at a time: each is converted, compressed and saved before the next is traced
        for name, traced in trace_graphs(model, post_processor, sizes, manifest["score"]["fused"]):
            if weights != "f32":
                # fp16 storage (what ov.save_model's compress_to_fp16 does), before NNCF: save_model
                # skips a graph NNCF has compressed, which kept its other constants (norms, biases,
                # SigLIP's position embeddings) in f32
                compress_model_transformation(traced)
            if name in samples:
                graph = quantize(traced, samples[name], FLOAT_SCOPES[name])
            elif weights not in {"f32", "fp16"} and not name.startswith("readout"):
                graph = compress_weights(traced, weights, language=name in {"language_model", "embeddings"})
            else:
                graph = traced
            graph.set_rt_info(manifest["config_id"], RT_INFO_KEY)
            path = root / f"{name}.xml"
            ov.save_model(graph, path, compress_to_fp16=False)
            files[name] = path.name
            del traced, graph  # released before the next graph is converted
    finally:
        model.vlm.unmerge_adapter()
        model.train(was_training)
    model.processor.save_pretrained(root / "processor")
    manifest["files"] = files
    path = root / MANIFEST
    path.write_text(json.dumps(manifest, indent=2))
    logger.info("GenAU OpenVINO export written to %s", root)
    return path


def build_manifest(
    model: GenAUModel, configuration: Mapping[str, Any], sizes: Sequence[tuple[int, int]], weights: str
) -> dict[str, Any]:
    """What the inferencer needs besides the graphs and the processor, and the configuration it must match."""
    config = model.llava.config
    configuration = {
        **configuration,
        "backbone_fingerprint": model.backbone_fingerprint,
        "high_res_readout": model.high_res_readout,
        "high_res_weight": model.high_res_weight,
        "score_fusion": model.score_fusion,
        "mixing_weight": model.calibration.mixing_weight,
    }
    config_id = hashlib.sha256(json.dumps(configuration, sort_keys=True).encode()).hexdigest()[:16]
    fused = bool(model.score_fusion and model.calibration.calibrated)
    if model.score_fusion and not fused:
        logger.warning("GenAU's score calibration is not estimated: the export scores by the map maximum.")
    type_mode = configuration.get("defect_type_mode")
    return {
        "format": FORMAT_VERSION,
        "config_id": config_id,
        "configuration": configuration,
        "weights": weights,
        "sizes": [list(size) for size in sizes],
        "tile_size": model.tile_size,
        "patch_size": config.vision_config.patch_size,
        "image_grid_pinpoints": config.image_grid_pinpoints,
        "max_new_tokens": model.max_new_tokens,
        "max_positions": config.text_config.max_position_embeddings,
        "default_object": model.codec.default_object,
        "defect_types": type_mode is not None,
        "score": {"fused": fused},
    }


def trace_graphs(
    model: GenAUModel, post_processor: PostProcessor, sizes: Sequence[tuple[int, int]], fused_score: bool
) -> Iterator[tuple[str, ov.Model]]:
    """Trace and convert every graph on a probe image of each size (weights already merged), one by one."""
    config = model.llava.config
    views = Dim("views", min=1, max=64)
    vision_tower = VisionTowerGraph(model)
    for index, size in enumerate(sizes):
        probe = torch.rand(3, *size)
        pixel_values = model.processor.image_processor(images=[probe], return_tensors="pt", do_rescale=False)
        pixel_values = pixel_values["pixel_values"][0]
        projector_input, stages = vision_tower(pixel_values)
        if index == 0:
            yield (
                "vision_tower",
                _name_outputs(
                    _convert(vision_tower, (pixel_values,), ["pixel_values"], ({0: views},)),
                    ["projector_input", "stage_features"],
                ),
            )
            input_ids = model.prompts(model.see(probe[None]), None).input_ids
            embeds = EmbeddingGraph(model)
            yield (
                "embeddings",
                _name_outputs(
                    _convert(embeds, (input_ids,), ["input_ids"], ({1: Dim("tokens", min=1, max=32768)},)),
                    ["inputs_embeds"],
                ),
            )
            yield "language_model", _convert_decoder(model, embeds(input_ids))
        yield (
            f"image_features_{size_name(size)}",
            _name_outputs(
                _convert(ImageFeaturesGraph(model, size), (projector_input,), ["projector_input"]), ["image_features"]
            ),
        )
        anchors = torch.randn(1, 2, config.text_config.hidden_size)
        readout = ReadoutGraph(model, post_processor, size, fused_score)
        yield (
            f"readout_{size_name(size)}",
            _name_outputs(
                _convert(readout, (stages, anchors, torch.zeros(1)), ["stage_features", "anchors", "log_odds"]),
                ["pred_score", "pred_label", "anomaly_map", "pred_mask"],
            ),
        )


def cache_names(layers: int, prefix: str) -> list[str]:
    """``prefix.0.key``, ``prefix.0.value``, ``prefix.1.key``...: the decoder's KV-cache inputs or outputs."""
    return [f"{prefix}.{layer}.{kind}" for layer in range(layers) for kind in ("key", "value")]


def _convert_decoder(model: torch.nn.Module, embeds: torch.Tensor) -> ov.Model:
    """The stateful decoder graph, traced on distinct sizes and a non-empty past so no dimension is specialised."""
    text = model.llava.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    layers, batch, length, past, kept = text.num_hidden_layers, 2, 4, 2, 3
    embeds = embeds[:, :length].expand(batch, -1, -1).contiguous()
    # distinct tensors: torch.export would alias one tensor passed twice
    caches = [torch.zeros(batch, text.num_key_value_heads, past, head_dim) for _ in range(2 * layers)]
    auto = Dim.AUTO
    graph = _convert(
        DecoderGraph(model),
        (
            embeds,
            torch.zeros(batch, 1, length, past + length),
            torch.arange(past, past + length).expand(batch, -1),
            torch.arange(batch),
            torch.arange(length - kept, length),
            caches,
        ),
        [
            "inputs_embeds",
            "attention_mask",
            "position_ids",
            "beam_idx",
            "logits_positions",
            *cache_names(layers, "past"),
        ],
        (
            {0: auto, 1: auto},
            {0: auto, 2: auto, 3: auto},
            {0: auto, 1: auto},
            {0: auto},
            {0: auto},
            [{0: auto, 2: auto}] * len(caches),
        ),
    )
    _name_outputs(graph, ["logits", "hidden", *cache_names(layers, "present")])
    return make_stateful(graph, layers, text.num_key_value_heads, head_dim)


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
