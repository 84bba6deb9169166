"""The vision side of GenAU: one SigLIP pass feeds the decoder's image features and the readout.

Shapes: ``P`` views per image (the global view first, then its AnyRes tiles), ``s`` the tile
size, ``N = h * w`` patches per view, ``C`` vision width, ``D`` decoder width, ``S`` stages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import LlavaOnevisionForConditionalGeneration
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

from anomalib_genau.choices import VISUAL_TOKENS

from .anyres import distinct_views

ImageSizes = torch.Tensor | Sequence[Sequence[int]]


@dataclass
class VisionFeatures:
    """One vision-tower pass on a batch of images, shared by every question and by the readout.

    Attributes:
        image_features: Per image, its projected, packed image features ``(T_i, D)``: what the
            decoder reads at its ``T_i`` image tokens (transformers' ``image_features``).
        global_stages: Per stage, the global views' patch features ``(B, N, C)``.
        tile_stages: Per image, per stage, its AnyRes tiles' features ``(P_i - 1, N, C)``.
        image_sizes: ``(B, 2)`` sizes ``(H, W)`` the processor was given.

    """

    image_features: list[torch.Tensor]
    global_stages: list[torch.Tensor]
    tile_stages: list[list[torch.Tensor]]
    image_sizes: list[list[int]]

    @property
    def token_counts(self) -> list[int]:
        """Image tokens per image in the prompt."""
        return [len(features) for features in self.image_features]


def rgb_images(images: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Images as a list of ``(3, H_i, W_i)``; a ``(B, C, H, W)`` tensor or ``(C, H, W)`` images of any sizes.

    Raises:
        ValueError: An image is not ``(3, H, W)`` or ``(1, H, W)`` (grayscale, repeated to RGB).

    """
    if isinstance(images, torch.Tensor) and (images.ndim != 4 or images.shape[1] not in {1, 3}):
        msg = f"GenAU expects images of shape (B, 3, H, W) or (B, 1, H, W), got {tuple(images.shape)}."
        raise ValueError(msg)
    listed = list(images)
    for image in listed:
        if image.ndim != 3 or image.shape[0] not in {1, 3}:
            msg = f"GenAU expects images of shape (3, H, W) or (1, H, W), got {tuple(image.shape)}."
            raise ValueError(msg)
    return [image.expand(3, -1, -1) if image.shape[0] == 1 else image for image in listed]


def size_list(image_sizes: ImageSizes) -> list[list[int]]:
    """Image sizes as Python ints: ``torch.export`` keeps them static (the AnyRes grid is a constant)."""
    return image_sizes.tolist() if isinstance(image_sizes, torch.Tensor) else [[int(v) for v in s] for s in image_sizes]


def view_counts(llava: LlavaOnevisionForConditionalGeneration, image_sizes: ImageSizes) -> list[int]:
    """Views per image (global view plus AnyRes tiles) for ``(B, 2)`` sizes ``(H, W)``."""
    config = llava.config
    return [
        image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size)
        for size in size_list(image_sizes)
    ]


def global_view_indices(counts: Sequence[int]) -> list[int]:
    """Where each image's global view lies among all images' views, given the views per image."""
    return [sum(counts[:i]) for i in range(len(counts))]


def tower(
    llava: LlavaOnevisionForConditionalGeneration, views: torch.Tensor, stages: Sequence[int]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """SigLIP on ``(P, 3, s, s)`` views: the layer the projector takes ``(P, N, C)`` and the readout's stages."""
    hidden = llava.model.vision_tower(views, output_hidden_states=True, return_dict=True).hidden_states
    feature_layer = llava.config.vision_feature_layer
    if isinstance(feature_layer, int):
        projector_input = hidden[feature_layer]
    else:
        projector_input = torch.cat([hidden[layer] for layer in feature_layer], dim=-1)
    return projector_input, [hidden[layer] for layer in stages]


def check_visual_tokens(visual_tokens: str) -> str:
    """``visual_tokens`` if it names a token budget of ``choices.VISUAL_TOKENS``.

    Raises:
        ValueError: An unknown name; the message lists the valid ones.

    """
    if visual_tokens not in VISUAL_TOKENS:
        msg = f"Unknown visual_tokens '{visual_tokens}'; use one of {', '.join(VISUAL_TOKENS)}."
        raise ValueError(msg)
    return visual_tokens


def image_features(
    llava: LlavaOnevisionForConditionalGeneration,
    projector_input: torch.Tensor,
    image_sizes: ImageSizes,
    visual_tokens: str = "anyres",
) -> list[torch.Tensor]:
    """Project the views' features and pack each image's tokens: per image ``(T_i, D)``.

    The tail of transformers' ``get_image_features``, which cannot take precomputed tower
    features (``encode_views`` runs the tower on distinct views only).

    Args:
        llava: The LLaVA-OneVision model.
        projector_input: ``(sum P_i, N, C)`` tower features of every image's views, global first.
        image_sizes: ``(B, 2)`` sizes ``(H, W)`` given to the image processor.
        visual_tokens: The token budget (``choices.VISUAL_TOKENS``): ``"anyres"``, transformers'
            packing of the global view and the unpadded tile grid with a newline token per row;
            ``"global"``, the global view and one newline token (``N + 1``); ``"pooled"`` and
            ``"global_pooled"``, the same views through LLaVA-OneVision's 2 x 2 pooling of video
            frames, concatenated with one newline token as it lays out a video (``P_i * N / 4 + 1``).

    """
    counts = view_counts(llava, image_sizes)
    if visual_tokens.startswith("global"):
        projector_input = projector_input[global_view_indices(counts)]
        counts = [1] * len(counts)
    if llava.config.vision_feature_select_strategy == "default":
        projector_input = projector_input[:, 1:]
    projected = llava.model.multi_modal_projector(projector_input)
    if visual_tokens.endswith("pooled"):
        newline = llava.model.image_newline[None].to(projected.dtype)
        pooled = llava.model.apply_pooling(projected)
        return [torch.cat([views.flatten(0, 1), newline]) for views in torch.split(pooled, counts)]
    packed, _ = llava.model.pack_image_features(
        torch.split(projected, counts),
        size_list(image_sizes),
        image_newline=llava.model.image_newline,
        vision_aspect_ratio=llava.config.vision_aspect_ratio,
    )
    return list(packed)


def split_views(
    llava: LlavaOnevisionForConditionalGeneration, stages: Sequence[torch.Tensor], image_sizes: ImageSizes
) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Split each stage's features of all views into global views and per-image tiles.

    Args:
        llava: The LLaVA-OneVision model (its AnyRes configuration).
        stages: ``S`` tensors ``(sum P_i, N, C)``: each image's ``P_i`` views, global first.
        image_sizes: ``(B, 2)`` sizes ``(H, W)`` given to the processor.

    Returns:
        Per stage the global views ``(B, N, C)``; per image, per stage its tiles ``(P_i - 1, N, C)``.

    """
    counts = view_counts(llava, image_sizes)
    starts = global_view_indices(counts)
    global_stages = [stage[starts] for stage in stages]
    tile_stages = [
        [stage[start + 1 : start + count] for stage in stages] for start, count in zip(starts, counts, strict=True)
    ]
    return global_stages, tile_stages


def encode_views(
    llava: LlavaOnevisionForConditionalGeneration,
    pixel_values: torch.Tensor,
    image_sizes: ImageSizes,
    stages: Sequence[int],
    visual_tokens: str = "anyres",
) -> VisionFeatures:
    """Run the vision tower once per distinct view, for the decoder's image features and for the readout.

    Args:
        llava: The LLaVA-OneVision model.
        pixel_values: ``(B, P, 3, s, s)`` views from the image processor (zero-padded to the most views).
        image_sizes: ``(B, 2)`` sizes ``(H, W)`` given to the image processor.
        stages: Vision ``hidden_states`` indices of the readout stages.
        visual_tokens: What the decoder reads of each image (:func:`image_features`).

    """
    counts = view_counts(llava, image_sizes)
    views = torch.cat([pixels[:count] for pixels, count in zip(pixel_values, counts, strict=True)])
    distinct, inverse = distinct_views(views, counts)
    frozen = not any(
        p.requires_grad
        for module in (llava.model.vision_tower, llava.model.multi_modal_projector)
        for p in module.parameters()
    )
    with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
        projector_input, stage_features = tower(llava, distinct.to(llava.dtype), stages)
        features = image_features(llava, projector_input[inverse], image_sizes, visual_tokens)
    global_stages, tile_stages = split_views(llava, [stage[inverse] for stage in stage_features], image_sizes)
    return VisionFeatures(features, global_stages, tile_stages, size_list(image_sizes))
