"""NNCF compression of GenAU's exported graphs: INT8/INT4 weights, or INT8 weights and activations.

Weight compression needs no data. Post-training quantization (``int8_ptq``) also runs the
decoder's matrix products on INT8 activations (AMX-INT8 on recent Xeons), which speeds up its
compute-bound prefill, and needs quantization images. The decoder is calibrated on each image's
prompt *and* the torch model's own answer to it, ``[SEG_defect] [SEG_normal]`` included, as one
sequence: the states of those two tokens are the anchors the maps are read with, and calibrated
on the prompts alone, a checkpoint's maps moved by up to 0.17 (mean 0.13) through the clipped
ranges of the segmentation tokens' activations (benchmarks/RESULTS.md). The LM head keeps
floating-point activations (its weights are INT8): its logits choose the answer's tokens, and the
anchors are read after the answer, so one token flipped by a clipped activation moved another
checkpoint's maps by up to 0.21 (mean 0.11) where the float LM head kept them within 0.04.

``int8_ptq_tower`` quantizes the vision tower's activations as well, on the quantization images'
views, except those of its patch embedding: the readout compares the tower's stage features with
the anchors directly, and quantizing the pixels the patch embedding reads moved the maps by up to
0.5, while every other quantizer of the tower together moved them by under 0.1 (NNCF's
accuracy-controlled quantization, with the maps as its metric, reverts exactly that one
operation: ``benchmarks/tower_sensitivity.py``, figures in ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import openvino as ov
import torch

from anomalib_genau.choices import QUANTIZED_GRAPHS
from anomalib_genau.models.genau.torch_model import GenAUModel

from .decoder_inputs import decoder_inputs, step_mask


def compress_weights(model: ov.Model, weights: str, language: bool) -> ov.Model:
    """NNCF weight compression: INT8 (asymmetric, per channel) or INT4 (symmetric, groups of 64).

    INT4 applies to the language graphs (``language``); it keeps NNCF's default INT8 backup for
    the embeddings and the LM head.
    """
    import nncf

    if weights == "int4" and language:
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=64, ratio=1.0)
    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)


@dataclass(frozen=True)
class FloatScope:
    """What of one graph keeps floating-point activations (and INT8 weights) under INT8 PTQ.

    Attributes:
        operation_types: Operation types whose inputs are not quantized.
        outputs: Graph outputs whose computing MatMul is not quantized.

    """

    operation_types: tuple[str, ...]
    outputs: tuple[str, ...] = ()


# Per quantized graph. The decoder's attention: quantizing its inputs breaks the CPU plugin's fused
# attention over the stateful KV cache, and the unfused attention makes every decoding step several
# times slower (benchmarks/RESULTS.md). The decoder's logits, which choose the answer's tokens (see
# above; the LM head reads one position per step). The tower's convolution: SigLIP's only one is
# the patch embedding (see above).
FLOAT_SCOPES = {
    "language_model": FloatScope(operation_types=("ScaledDotProductAttention",), outputs=("logits",)),
    "vision_tower": FloatScope(operation_types=("Convolution",)),
}


def output_matmul(model: ov.Model, output: str) -> str:
    """The friendly name of the MatMul nearest to the graph's output ``output``, along first inputs."""
    node = model.output(output).get_node()
    while node.get_type_name() != "MatMul":
        if node.get_input_size() == 0:
            msg = f"No MatMul computes the graph's output '{output}'."
            raise ValueError(msg)
        node = node.input_value(0).get_node()
    return node.get_friendly_name()


def quantize(model: ov.Model, samples: list[Any], float_scope: FloatScope) -> ov.Model:
    """NNCF post-training quantization (INT8 weights and activations) calibrated on ``samples``.

    What ``float_scope`` names keeps floating-point activations and gets INT8 weights only.
    """
    import nncf

    names = [output_matmul(model, output) for output in float_scope.outputs]
    quantized = nncf.quantize(
        model,
        nncf.Dataset(samples),
        subset_size=len(samples),
        model_type=nncf.ModelType.TRANSFORMER,
        ignored_scope=nncf.IgnoredScope(names=names, types=list(float_scope.operation_types)),
    )
    # NNCF's quantization leaves an ignored MatMul's weights as they were (fp16)
    return nncf.compress_weights(quantized, mode=nncf.CompressWeightsMode.INT8_ASYM) if names else quantized


class _PrefillCaptured(Exception):  # noqa: N818 - control flow, not an error
    """Stops the torch pass once its decoder inputs are captured (the decoder itself is not needed)."""


def quantization_samples(model: GenAUModel, images: Iterable[tuple[torch.Tensor, str | None]]) -> list[dict[str, Any]]:
    """Inputs of the decoder graph for each ``(image (3, H, W), instruction)``: the prompt and its answer.

    The model answers the prompt greedily (``ask``); the prompt's embeddings with the image
    features in place, followed by those of the answer's tokens and ``[SEG_defect]
    [SEG_normal]``, are one sample ``(1, L + A, D)`` with its mask, positions and ``beam_idx``:
    the activations the inferencer's prefill and decoding steps feed the decoder graph.
    ``instruction`` ``None`` is the canonical prompt on the model's default object.
    """
    llava = model.llava
    samples: list[dict[str, Any]] = []

    def capture(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        del args
        embeds = kwargs["inputs_embeds"].float().numpy()
        attention_mask = kwargs["attention_mask"].bool().numpy()
        samples.append(
            decoder_inputs(
                embeds,
                step_mask(np.zeros((len(embeds), 0), dtype=bool), attention_mask),
                kwargs["position_ids"].long().numpy(),
                np.array([embeds.shape[1] - 1]),
            )
        )
        raise _PrefillCaptured

    for image, instruction in images:
        instructions = None if instruction is None else [instruction]
        with torch.no_grad():
            vision = model.see(image[None])
            answer = model.ask(vision, instructions).decoded.tokens  # ends with the segmentation pair
            prompts = model.prompts(vision, instructions)
            input_ids = torch.cat([prompts.input_ids, answer.to(prompts.input_ids)], dim=1)
            attention_mask = torch.cat([prompts.attention_mask, torch.ones_like(answer)], dim=1)
            inputs = {**model.prefill_inputs(prompts, vision), "input_ids": input_ids}
            inputs |= {"attention_mask": attention_mask, "position_ids": model.position_ids(attention_mask)}
            hook = llava.model.language_model.register_forward_pre_hook(capture, with_kwargs=True)
            try:
                with contextlib.suppress(_PrefillCaptured):
                    llava(**inputs, use_cache=True, logits_to_keep=1)
            finally:
                hook.remove()
    if not samples:
        msg = "INT8 post-training quantization needs at least one quantization image."
        raise ValueError(msg)
    return samples


def tower_samples(model: GenAUModel, images: Iterable[tuple[torch.Tensor, str | None]]) -> list[np.ndarray]:
    """The vision tower graph's input for each ``(image (3, H, W), instruction)``: its views ``(P, 3, s, s)``."""
    processor = model.processor.image_processor
    samples = [
        processor(images=[image], return_tensors="pt", do_rescale=False)["pixel_values"][0].numpy()
        for image, _ in images
    ]
    if not samples:
        msg = "INT8 post-training quantization needs at least one quantization image."
        raise ValueError(msg)
    return samples


def calibration_samples(
    model: GenAUModel, images: Iterable[tuple[torch.Tensor, str | None]], weights: str
) -> dict[str, list[Any]]:
    """The inputs of each graph ``weights`` quantizes (:data:`QUANTIZED_GRAPHS`), one per quantization image."""
    samplers = {"language_model": quantization_samples, "vision_tower": tower_samples}
    images = list(images)
    return {name: samplers[name](model, images) for name in QUANTIZED_GRAPHS.get(weights, ())}
