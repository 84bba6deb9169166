"""The torch modules GenAU's OpenVINO export traces, one per graph.

GenAU answers with a decode loop and reads its map after it, so one traced graph cannot hold
it (anomalib's default export traces one forward). The export splits the model at the loop:

- ``VisionTowerGraph``: SigLIP on the views of one image; dynamic in the number of views,
  so its weights are stored once for every exported image size;
- ``ImageFeaturesGraph`` (one per size): projector and AnyRes packing into the decoder's image features;
- ``EmbeddingGraph``: token ids to embeddings (the new tokens' rows merged);
- ``DecoderGraph``: the Qwen2 decoder over a KV cache (kept in OpenVINO states by the export),
  used for the prefill and for every decoding step;
- ``ReadoutGraph`` (one per size): the anchor readout, the calibrated score and anomalib's
  post-processing (normalisation and thresholds).

Every graph calls the same ``GenAUModel`` code as eager inference, which is what keeps the
deployed outputs equal to the torch ones. Shapes: ``P`` views (global first, then tiles),
``N = h * w`` patches per view, ``C`` vision width, ``D`` decoder width, ``S`` stages.
"""

from __future__ import annotations

import torch
from anomalib.data import InferenceBatch
from anomalib.post_processing import PostProcessor
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from anomalib_genau.models.genau.torch_model import GenAUModel
from anomalib_genau.models.genau.vision import VisionFeatures, image_features, split_views, tower


class VisionTowerGraph(nn.Module):
    """``pixel_values (P, 3, s, s)`` -> ``projector_input (P, N, C)``, ``stage_features (S, P, N, C)``."""

    def __init__(self, model: GenAUModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer LLaVA-OneVision feeds its projector and the readout's stages."""
        projector_input, stages = tower(self.model.llava, pixel_values, self.model.vision_layers)
        return projector_input, torch.stack(stages)


class ImageFeaturesGraph(nn.Module):
    """``projector_input (P, N, C)`` -> ``image_features (T, D)`` for an image of one ``(H, W)``.

    transformers' ``get_image_features`` runs the tower and this packing in one call; the export
    splits them so that the tower's weights are stored once for all sizes.
    """

    def __init__(self, model: GenAUModel, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.image_size = [int(image_size[0]), int(image_size[1])]

    def forward(self, projector_input: torch.Tensor) -> torch.Tensor:
        """Project, unpad the tile grid, add the newline tokens, prepend the global view."""
        return image_features(self.model.llava, projector_input, [self.image_size], self.model.visual_tokens)[0]


class EmbeddingGraph(nn.Module):
    """``input_ids (B, L)`` -> ``inputs_embeds (B, L, D)``."""

    def __init__(self, model: GenAUModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The decoder's input embeddings, the segmentation tokens' trained rows included."""
        return self.model.llava.get_input_embeddings()(input_ids)


class _ExportedCacheLayer(DynamicLayer):
    """A KV-cache layer that starts from a zero-length slice of the states.

    transformers starts a layer from a 1-D empty tensor and concatenates onto it; OpenVINO's
    Concat needs equal ranks, so the traced graph starts from ``states[..., :0, :]`` instead.
    """

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Zero-length keys and values of the states' rank, dtype and device."""
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys, self.values = key_states[..., :0, :], value_states[..., :0, :]
        self.is_initialized = True


class DecoderGraph(nn.Module):
    """One cached decoder pass: the prefill (empty past) or a decoding step.

    Inputs: ``inputs_embeds (B, L, D)``, ``attention_mask (B, 1, L, T + L)`` (additive: 0 where a
    new token reads a position, the float minimum elsewhere; ``prompt_tree``), ``position_ids
    (B, L)``, ``beam_idx (B,)`` (the past row each row continues: ``arange(B)``),
    ``logits_positions (K,)`` (the new positions whose next-token logits are returned) and
    ``past``: per layer its keys, then its values, ``(B, kv_heads, T, head_dim)``.
    Outputs: ``logits (B, K, V)``, ``hidden (B, L, D)`` (final layer, after the norm) of every new
    position, then per layer the present keys and values ``(B, kv_heads, T + L, head_dim)``.

    The export turns each past/present pair into an OpenVINO state. Reading the past through
    ``beam_idx`` is the pattern with which OpenVINO's CPU plugin fuses the state, the cache
    concatenation and the attention into one kernel over its own cache (without the gather,
    the attention is left unfused).
    """

    def __init__(self, model: GenAUModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        beam_idx: torch.Tensor,
        logits_positions: torch.Tensor,
        past: list[torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        """Run the decoder over the new positions against the past keys and values."""
        llava = self.model.llava
        cache = DynamicCache()
        cache.layers = [_ExportedCacheLayer() for _ in range(len(past) // 2)]
        for layer in range(len(past) // 2):
            cache.update(past[2 * layer][beam_idx], past[2 * layer + 1][beam_idx], layer)
        output = llava.model.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        )
        hidden = output.last_hidden_state
        present = [states for layer in cache.layers for states in (layer.keys, layer.values)]
        return llava.lm_head(hidden.index_select(1, logits_positions)), hidden, *present


class ReadoutGraph(nn.Module):
    """Anchors to anomalib's outputs for an image of one ``(H, W)``.

    Inputs: ``stage_features (S, P, N, C)``, ``anchors (1, 2, D)`` (normal, defect) and
    ``log_odds (1,)``. Outputs, as anomalib's exported models name them: ``pred_score (1,)``,
    ``pred_label (1,)``, ``anomaly_map (1, 1, H, W)``, ``pred_mask (1, 1, H, W)``.

    Args:
        model: The GenAU torch model.
        post_processor: anomalib's post-processor with its thresholds and normalisation.
        image_size: ``(H, W)`` of the exported size.
        fused_score: Score by the calibrated fusion (``True``) or the map maximum; decided at
            export from ``score_fusion`` and whether the calibration was estimated.

    """

    def __init__(
        self, model: GenAUModel, post_processor: PostProcessor, image_size: tuple[int, int], fused_score: bool
    ) -> None:
        super().__init__()
        self.model = model
        self.post_processor = post_processor
        self.image_sizes = [[int(image_size[0]), int(image_size[1])]]
        self.fused_score = fused_score

    def forward(
        self, stage_features: torch.Tensor, anchors: torch.Tensor, log_odds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Map, score and anomalib's post-processing, as ``GenAU`` computes them in eager mode."""
        global_stages, tile_stages = split_views(self.model.llava, list(stage_features), self.image_sizes)
        vision = VisionFeatures([], global_stages, tile_stages, self.image_sizes)
        maps = self.model.anomaly_maps(vision, anchors)
        map_max = maps.flatten(1).amax(dim=1)
        score = self.model.calibration(map_max, log_odds) if self.fused_score else map_max
        batch = self.post_processor(InferenceBatch(pred_score=score, anomaly_map=maps))
        return batch.pred_score, batch.pred_label, batch.anomaly_map, batch.pred_mask
