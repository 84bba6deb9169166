"""PyTorch model of GenAU: a LLaVA-OneVision VLM whose segmentation tokens ground a pixel map.

Shapes: ``B`` images of ``(3, H, W)`` in ``[0, 1]``; ``L`` tokens; ``D`` decoder width;
``C`` vision width; ``S`` vision stages; the global view is an ``h x w`` patch grid
(``image_size / patch_size`` per side, 27 x 27 for SigLIP-so400m at 384 px).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from anomalib.data import InferenceBatch
from torch import nn
from transformers import LlavaOnevisionForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

from anomalib_genau import prompts
from anomalib_genau.backbone import load_backbone
from anomalib_genau.parsing import parse_defect_types

from .anyres import distinct_views, reassemble_tiles
from .calibration import ScoreCalibration
from .decoding import DecodeResult, anchor_states, decode_with_anchors, option_log_likelihoods
from .readout import AnchorReadout, anomaly_map, pad_maps
from .vlm import add_segmentation_tokens, apply_adapters, backbone_fingerprint

logger = logging.getLogger(__name__)

# Paper default stages for SigLIP-so400m as LLaVA-OneVision keeps it (26 layers): hidden_states
# indices 7, 13, 19 and the last; other depths scale these fractions.
PAPER_STAGE_FRACTIONS = (7 / 26, 13 / 26, 19 / 26, 1.0)


def resolve_vision_layers(vision_layers: Sequence[int] | None, depth: int) -> list[int]:
    """Vision ``hidden_states`` indices of the readout stages.

    Args:
        vision_layers: Explicit indices in ``1..depth`` (``hidden_states[0]`` is the patch
            embedding, ``hidden_states[depth]`` the last layer before ``post_layernorm``), or
            ``None`` for the paper's stages scaled to ``depth`` (``(7, 13, 19, 26)`` at 26).
        depth: Number of SigLIP layers of the backbone.

    """
    if vision_layers is None:
        return [max(1, round(fraction * depth)) for fraction in PAPER_STAGE_FRACTIONS]
    layers = [depth + 1 + layer if layer < 0 else layer for layer in vision_layers]
    if not layers or any(not 1 <= layer <= depth for layer in layers):
        msg = f"vision_layers {list(vision_layers)} must be non-empty indices in 1..{depth} for this backbone."
        raise ValueError(msg)
    return layers


@dataclass
class TeacherForcedOutput:
    """Training pass output: ``lm_loss`` (scalar) and ``stage_logits`` ``(S, B, 2, h, w)``."""

    lm_loss: torch.Tensor
    stage_logits: torch.Tensor


@dataclass
class Inspection:
    """Inference output: anomalib's ``InferenceBatch`` plus the decoded answers.

    Attributes:
        batch: ``pred_score`` ``(B,)`` and ``anomaly_map`` ``(B, 1, H, W)``, both in ``[0, 1]``.
        answers: Generated answer per image, without the segmentation tokens.
        forced: ``(B,)`` bool, True where the segmentation tokens had to be appended.
        map_max: ``(B,)`` maximum of the anomaly map (the visual score).
        log_odds: ``(B,)`` decoder log-odds of a defect answer against a normal one.
        vision: The vision pass, for further questions on the same images.

    """

    batch: InferenceBatch
    answers: list[str]
    forced: torch.Tensor
    map_max: torch.Tensor
    log_odds: torch.Tensor
    vision: VisionFeatures


@dataclass
class TypePrediction:
    """Multi-type answers: per image the predicted types (``[]`` = normal), how they were decided, the text."""

    types: list[list[str]]
    outcomes: list[str]
    texts: list[str]


@dataclass
class VisionFeatures:
    """One vision-tower pass, shared by the decoder and the readout.

    Attributes:
        encoder_output: What ``mm_encoder_outputs["image"]`` takes (LLM-space image tokens).
        global_stages: Per stage, the global view's patch features ``(B, h*w, C)``.
        tile_stages: Per image, per stage, its AnyRes tiles' features ``(n_tiles, h*w, C)``.

    """

    encoder_output: object
    global_stages: list[torch.Tensor]
    tile_stages: list[list[torch.Tensor]]


def _size_list(image_sizes: torch.Tensor | Sequence[Sequence[int]]) -> list[list[int]]:
    """Image sizes as Python ints: ``torch.export`` keeps them static (the AnyRes grid is a constant)."""
    return image_sizes.tolist() if isinstance(image_sizes, torch.Tensor) else [[int(v) for v in s] for s in image_sizes]


class GenAUModel(nn.Module):
    """LLaVA-OneVision with ``[SEG_defect]``/``[SEG_normal]`` anchors and a multi-stage readout.

    Args:
        backbone: Hugging Face id or local directory of a LLaVA-OneVision checkpoint.
        vision_layers: Vision stages of the readout; ``None`` scales the paper's four stages.
        temperature: Similarity temperature (project's choice: 0.07).
        lora_rank: LoRA rank (project's choice: 8).
        lora_alpha: LoRA alpha (project's choice: 16).
        lora_dropout: LoRA dropout (project's choice: 0.05).
        max_new_tokens: Decoding budget of an answer, segmentation tokens included.
        default_object: Object name of the prompt when a batch carries no instruction.
        high_res_readout: Fuse the AnyRes high-resolution readout into the map at inference.
        high_res_weight: Weight of the high-res map in the per-stage fusion (project's choice: 0.5).
        score_fusion: Fuse the map maximum with the decoder log-odds; ``False`` scores by the
            map maximum only (the paper's "map-max only" ablation).
        mixing_weight: Weight of the map term in the fused score (project's choice: 0.5).
        lora: LoRA on the decoder (``False``: the "LoRA off" ablation).
        train_projector: Train the multimodal projector (ablation; frozen in the paper).
        train_vision: Train the vision encoder (ablation; frozen in the paper).
        gradient_checkpointing: Recompute the decoder's (and a trained vision tower's) layer
            activations in the backward pass instead of storing them: less memory, same gradients.

    """

    def __init__(
        self,
        backbone: str,
        vision_layers: Sequence[int] | None = None,
        temperature: float = 0.07,
        lora_rank: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.05,
        max_new_tokens: int = 24,
        default_object: str = "object",
        high_res_readout: bool = True,
        high_res_weight: float = 0.5,
        score_fusion: bool = True,
        mixing_weight: float = 0.5,
        lora: bool = True,
        train_projector: bool = False,
        train_vision: bool = False,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        llava, self.processor = load_backbone(backbone)
        if gradient_checkpointing:
            # non-reentrant: gradients reach LoRA weights although the layer inputs need none
            llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.backbone_fingerprint = backbone_fingerprint(llava)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.seg_ids = add_segmentation_tokens(llava, self.tokenizer)
        self.vlm = apply_adapters(
            llava,
            list(self.seg_ids),
            lora=lora,
            rank=lora_rank,
            alpha=lora_alpha,
            dropout=lora_dropout,
            train_projector=train_projector,
            train_vision=train_vision,
        )
        vision_config = llava.config.vision_config
        self.vision_layers = resolve_vision_layers(vision_layers, vision_config.num_hidden_layers)
        self.readout = AnchorReadout(
            vision_config.hidden_size, llava.config.text_config.hidden_size, len(self.vision_layers), temperature
        )
        self.tile_size = vision_config.image_size
        self.grid = (vision_config.image_size // vision_config.patch_size,) * 2
        self.max_new_tokens = max_new_tokens
        self.default_object = default_object
        self.high_res_readout = high_res_readout
        self.high_res_weight = high_res_weight
        self.score_fusion = score_fusion
        self.calibration = ScoreCalibration(mixing_weight)
        self.warned_uncalibrated = False
        self.answer_ids = self.first_answer_tokens()
        self.pad_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        )
        self.banned_ids = [i for i in self.tokenizer.all_special_ids if i not in self.seg_ids]
        self.train()  # from_pretrained leaves the backbone in eval mode; LoRA dropout needs train mode

    @property
    def llava(self) -> LlavaOnevisionForConditionalGeneration:
        """The LLaVA-OneVision model, with the LoRA layers injected."""
        return self.vlm.get_base_model()

    @staticmethod
    def image_list(images: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Images as a list of ``(3, H_i, W_i)``; a ``(B, C, H, W)`` tensor or ``(C, H, W)`` images of any sizes.

        Raises:
            ValueError: An image is not ``(3, H, W)`` or ``(1, H, W)`` (grayscale, repeated to RGB).

        """
        listed = list(images)
        for image in listed:
            if image.ndim != 3 or image.shape[0] not in {1, 3}:
                msg = f"GenAU expects images of shape (3, H, W) or (1, H, W), got {tuple(image.shape)}."
                raise ValueError(msg)
        return [image.expand(3, -1, -1) if image.shape[0] == 1 else image for image in listed]

    def encode(
        self, images: torch.Tensor | Sequence[torch.Tensor], instructions: Sequence[str] | None
    ) -> dict[str, torch.Tensor]:
        """Chat-render the instructions and run the LLaVA-OneVision processor.

        Args:
            images: ``(B, 3, H, W)`` in ``[0, 1]``, or a list of ``(3, H_i, W_i)`` of different
                sizes (each gets its own AnyRes grid; the processor pads the patch lists).
            instructions: One instruction per image, or ``None`` for the canonical prompt on
                ``default_object``.

        Returns:
            ``input_ids`` / ``attention_mask`` ``(B, L)`` left-padded, ``pixel_values``
            ``(B, P, 3, s, s)`` (``P`` views: global first, then AnyRes tiles) and
            ``image_sizes`` ``(B, 2)``.

        """
        if isinstance(images, torch.Tensor) and (images.ndim != 4 or images.shape[1] not in {1, 3}):
            msg = f"GenAU expects images of shape (B, 3, H, W) or (B, 1, H, W), got {tuple(images.shape)}."
            raise ValueError(msg)
        images = self.image_list(images)
        if instructions is None:
            instructions = [prompts.instruction(self.default_object)] * len(images)
        if len(instructions) != len(images):
            msg = f"Got {len(instructions)} instructions for {len(images)} images."
            raise ValueError(msg)
        chats = [
            self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
                add_generation_prompt=True,
                tokenize=False,
            )
            for text in instructions
        ]
        encoded = self.processor(
            images=[image.detach().float().clamp(0, 1).cpu() for image in images],
            text=chats,
            return_tensors="pt",
            padding=True,
            do_rescale=False,
        )
        device = self.readout.projections[0].weight.device
        return {key: encoded[key].to(device) for key in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}

    def view_counts(self, image_sizes: torch.Tensor | Sequence[Sequence[int]]) -> list[int]:
        """Views per image (global view plus AnyRes tiles) for ``(B, 2)`` sizes ``(H, W)``."""
        config = self.llava.config
        return [
            image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size)
            for size in _size_list(image_sizes)
        ]

    def tower(self, views: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """SigLIP on ``(P, 3, s, s)`` views: the layer the projector takes ``(P, N, C)`` and the ``S`` stages."""
        llava = self.llava
        hidden = llava.model.vision_tower(views, output_hidden_states=True, return_dict=True).hidden_states
        feature_layer = llava.config.vision_feature_layer
        if isinstance(feature_layer, int):
            llm_features = hidden[feature_layer]
        else:
            llm_features = torch.cat([hidden[layer] for layer in feature_layer], dim=-1)
        return llm_features, [hidden[layer] for layer in self.vision_layers]

    def image_tokens(
        self, llm_features: torch.Tensor, image_sizes: torch.Tensor | Sequence[Sequence[int]]
    ) -> list[torch.Tensor]:
        """Project the views' features and pack each image's AnyRes grid: per image ``(T_i, D)`` tokens.

        The tail of transformers' ``get_image_features``, which cannot take precomputed tower
        features (``vision_features`` runs the tower on distinct views only).
        """
        llava = self.llava
        if llava.config.vision_feature_select_strategy == "default":
            llm_features = llm_features[:, 1:]
        projected = llava.model.multi_modal_projector(llm_features)
        packed, _ = llava.model.pack_image_features(
            torch.split(projected, self.view_counts(image_sizes)),
            _size_list(image_sizes),
            image_newline=llava.model.image_newline,
            vision_aspect_ratio=llava.config.vision_aspect_ratio,
        )
        return list(packed)

    def vision_features(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> VisionFeatures:
        """Run the vision tower once per distinct view, for the decoder's image tokens and for the readout.

        Args:
            pixel_values: ``(B, P, 3, s, s)`` views from the processor (zero-padded to the most views).
            image_sizes: ``(B, 2)`` sizes ``(H, W)`` given to the processor.

        """
        llava = self.llava
        counts = self.view_counts(image_sizes)
        views = torch.cat([pixels[:count] for pixels, count in zip(pixel_values, counts, strict=True)])
        distinct, inverse = distinct_views(views, counts)
        frozen = not any(
            p.requires_grad
            for module in (llava.model.vision_tower, llava.model.multi_modal_projector)
            for p in module.parameters()
        )
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            llm_features, stages = self.tower(distinct.to(llava.dtype))
            image_tokens = self.image_tokens(llm_features[inverse], image_sizes)
        global_stages, tile_stages = self.split_views([stage[inverse] for stage in stages], image_sizes)
        return VisionFeatures(
            encoder_output=BaseModelOutputWithPooling(pooler_output=image_tokens),
            global_stages=global_stages,
            tile_stages=tile_stages,
        )

    def split_views(
        self, stages: Sequence[torch.Tensor], image_sizes: torch.Tensor | Sequence[Sequence[int]]
    ) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """Split each stage's features of all views into global views and per-image tiles.

        Args:
            stages: ``S`` tensors ``(sum P_i, h*w, C)``: each image's ``P_i`` views, global first.
            image_sizes: ``(B, 2)`` sizes ``(H, W)`` given to the processor.

        Returns:
            Per stage the global views ``(B, h*w, C)``; per image, per stage its tiles ``(P_i - 1, h*w, C)``.

        """
        counts = self.view_counts(image_sizes)
        starts = [sum(counts[:i]) for i in range(len(counts))]
        global_stages = [stage[starts] for stage in stages]
        tile_stages = [
            [stage[start + 1 : start + count] for stage in stages] for start, count in zip(starts, counts, strict=True)
        ]
        return global_stages, tile_stages

    def high_res_logits(
        self, vision: VisionFeatures, anchors: torch.Tensor, image_sizes: torch.Tensor | Sequence[Sequence[int]]
    ) -> list[torch.Tensor]:
        """Readout on each image's reassembled AnyRes grid: per image ``(S, 1, 2, h_i, w_i)``."""
        config = self.llava.config
        logits = []
        for index, (tiles, size) in enumerate(zip(vision.tile_stages, _size_list(image_sizes), strict=True)):
            grids = [reassemble_tiles(stage, size, config.image_grid_pinpoints, self.tile_size) for stage in tiles]
            height, width = grids[0].shape[:2]
            features = [grid.reshape(1, height * width, -1) for grid in grids]
            logits.append(self.readout(features, anchors[index : index + 1], (height, width)))
        return logits

    def first_answer_tokens(self) -> tuple[int, int]:
        """First token ids of a normal and of a defect answer; their log-odds is the decoder's decision."""
        normal = self.tokenizer(prompts.answer(self.default_object, []), add_special_tokens=False)["input_ids"][0]
        defect = self.tokenizer(prompts.answer(self.default_object, ["x"]), add_special_tokens=False)["input_ids"][0]
        if normal == defect:
            msg = "Normal and defect answers start with the same token; the decoder log-odds would be 0."
            raise ValueError(msg)
        return normal, defect

    def image_score(self, map_max: torch.Tensor, log_odds: torch.Tensor) -> torch.Tensor:
        """Fused, calibrated score; the map maximum without fusion or before any calibration."""
        if not self.score_fusion:
            return map_max
        if not self.calibration.calibrated:
            if not self.warned_uncalibrated:
                logger.warning("GenAU's score calibration is not estimated yet: scoring by the map maximum.")
                self.warned_uncalibrated = True
            return map_max
        return self.calibration(map_max, log_odds)

    @staticmethod
    def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
        """Positions that skip padding, so left and right padding give the same states."""
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def prefill_inputs(self, encoded: dict[str, torch.Tensor], vision: VisionFeatures) -> dict:
        """Keyword arguments of the prefill forward, with the vision output already computed."""
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "position_ids": self.position_ids(encoded["attention_mask"]),
            "mm_encoder_outputs": {"image": vision.encoder_output},
        }

    def response_ids(self, response: str) -> list[int]:
        """Token ids of one training response, closed with the end-of-turn token.

        Raises:
            ValueError: The response does not end with ``[SEG_defect] [SEG_normal]``.

        """
        ids = self.tokenizer(response, add_special_tokens=False)["input_ids"]
        if ids[-2:] != list(self.seg_ids):
            msg = f"Response {response!r} must end with '[SEG_defect] [SEG_normal]' (GenAU reads its anchors there)."
            raise ValueError(msg)
        return [*ids, self.tokenizer.convert_tokens_to_ids("<|im_end|>")]

    def append_responses(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, responses: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Append each response after its (left-padded) prompt and right-pad.

        Args:
            prompt_ids: ``(B, L)`` prompt ids, image tokens expanded.
            prompt_mask: ``(B, L)`` prompt attention mask.
            responses: One response per image.

        Returns:
            ``input_ids``, ``attention_mask`` and ``labels``, each ``(B, L + R)``; labels are
            ``-100`` on the prompt, the image tokens and the padding.

        """
        response_ids = [self.response_ids(text) for text in responses]
        width = max(len(ids) for ids in response_ids)
        appended = torch.full((len(response_ids), width), self.pad_id, dtype=torch.long)
        appended_mask = torch.zeros_like(appended)
        for row, ids in enumerate(response_ids):
            appended[row, : len(ids)] = torch.tensor(ids)
            appended_mask[row, : len(ids)] = 1
        appended, appended_mask = appended.to(prompt_ids.device), appended_mask.to(prompt_ids.device)
        input_ids = torch.cat([prompt_ids, appended], dim=1)
        attention_mask = torch.cat([prompt_mask, appended_mask], dim=1)
        labels = torch.cat([torch.full_like(prompt_ids, -100), appended.masked_fill(appended_mask == 0, -100)], dim=1)
        return input_ids, attention_mask, labels

    def teacher_forced(
        self, images: torch.Tensor, instructions: Sequence[str] | None, responses: Sequence[str]
    ) -> TeacherForcedOutput:
        """One teacher-forced pass: LM loss on the response tokens and the stage logits."""
        encoded = self.encode(images, instructions)
        input_ids, attention_mask, labels = self.append_responses(
            encoded["input_ids"], encoded["attention_mask"], responses
        )
        vision = self.vision_features(encoded["pixel_values"], encoded["image_sizes"])
        output = self.llava(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=self.position_ids(attention_mask),
            mm_encoder_outputs={"image": vision.encoder_output},
            labels=labels,
            output_hidden_states=True,
        )
        anchors = anchor_states(output.hidden_states[-1], input_ids, self.seg_ids)
        return TeacherForcedOutput(
            lm_loss=output.loss, stage_logits=self.readout(vision.global_stages, anchors, self.grid)
        )

    def decode(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        instructions: Sequence[str] | None,
        max_new_tokens: int | None = None,
        vision: VisionFeatures | None = None,
    ) -> tuple[dict[str, torch.Tensor], VisionFeatures, DecodeResult, list[str]]:
        """Encode, run the vision tower once, decode greedily; returns those and the answer texts.

        ``vision``: an earlier pass on the same images (another question), reused instead of
        running the tower again.
        """
        encoded = self.encode(images, instructions)
        vision = vision or self.vision_features(encoded["pixel_values"], encoded["image_sizes"])
        decoded = decode_with_anchors(
            self.llava,
            self.prefill_inputs(encoded, vision),
            self.seg_ids,
            self.banned_ids,
            self.pad_id,
            max_new_tokens or self.max_new_tokens,
        )
        answers = [
            text.strip() for text in self.tokenizer.batch_decode(decoded.answer_tokens, skip_special_tokens=True)
        ]
        return encoded, vision, decoded, answers

    def anomaly_maps(
        self, vision: VisionFeatures, anchors: torch.Tensor, image_sizes: torch.Tensor | Sequence[Sequence[int]]
    ) -> torch.Tensor:
        """Anomaly maps ``(B, 1, max H, max W)`` in ``[0, 1]`` from one vision pass and the ``(B, 2, D)`` anchors.

        Images of one size give ``(B, 1, H, W)``; of different sizes, each map is computed at its
        own size and zero-padded at the bottom and right (maps are ``>= 0``).
        """
        logits = self.readout(vision.global_stages, anchors, self.grid)
        high_res = self.high_res_logits(vision, anchors, image_sizes) if self.high_res_readout else None
        sizes = [tuple(size) for size in _size_list(image_sizes)]
        if len(set(sizes)) == 1:
            return anomaly_map(logits, sizes[0], high_res, self.high_res_weight)
        return pad_maps(
            [
                anomaly_map(logits[:, i : i + 1], size, high_res and high_res[i : i + 1], self.high_res_weight)
                for i, size in enumerate(sizes)
            ]
        )

    def decision_log_odds(self, first_logits: torch.Tensor) -> torch.Tensor:
        """``(B,)`` log-odds of a defect answer against a normal one, from the ``(B, V)`` first-answer logits."""
        log_probs = first_logits.float().log_softmax(dim=-1)
        normal_id, defect_id = self.answer_ids
        return log_probs[:, defect_id] - log_probs[:, normal_id]

    @torch.no_grad()
    def inspect(
        self, images: torch.Tensor | Sequence[torch.Tensor], instructions: Sequence[str] | None = None
    ) -> Inspection:
        """Answer, read the anchors and the anomaly map: the inference path.

        ``images`` is a ``(B, 3, H, W)`` batch or a list of images of different sizes; a list
        is decoded as one batch, and its maps are ``(B, 1, max H, max W)``, each image's map at
        its own size in the top-left corner, zero elsewhere.

        Decoding is greedy with the KV cache; if the model has not emitted
        ``[SEG_defect] [SEG_normal]`` within ``max_new_tokens``, the two tokens are appended
        (``Inspection.forced`` says where), so every image gets a map. The map fuses the
        global view with the AnyRes high-res readout (``high_res_readout``); the score fuses
        the map maximum with the decoder log-odds under the frozen calibration.
        """
        encoded, vision, decoded, answers = self.decode(images, instructions)
        maps = self.anomaly_maps(vision, decoded.anchors, encoded["image_sizes"])
        map_max = maps.flatten(1).amax(dim=1)
        log_odds = self.decision_log_odds(decoded.first_logits)
        batch = InferenceBatch(pred_score=self.image_score(map_max, log_odds), anomaly_map=maps)
        return Inspection(
            batch=batch, answers=answers, forced=decoded.forced, map_max=map_max, log_odds=log_odds, vision=vision
        )

    @torch.no_grad()
    def predict_types(
        self,
        images: torch.Tensor,
        type_instructions: Sequence[str],
        candidates: Sequence[Sequence[str]],
        mode: str = "generate",
        vision: VisionFeatures | None = None,
    ) -> TypePrediction:
        """Answer the product-conditioned multi-type question (paper 4.4).

        Args:
            images: ``(B, 3, H, W)`` in ``[0, 1]``.
            type_instructions: The multi-type instruction of each image.
            candidates: Each image's candidate types (taxonomy names).
            mode: ``"generate"``: greedy answer mapped by the deterministic parser;
                ``"likelihood"``: the option (``normal`` or a candidate) whose answer text has
                the highest sequence log-likelihood, with no free generation.
            vision: The binary question's vision pass on the same images, reused.

        """
        if mode == "generate":
            answers = self.decode(images, type_instructions, vision=vision)[3]
            parsed = [parse_defect_types(text, names) for text, names in zip(answers, candidates, strict=True)]
            return TypePrediction([p.types for p in parsed], [p.outcome for p in parsed], answers)
        if mode != "likelihood":
            msg = f"Unknown defect type mode '{mode}'; use 'generate' or 'likelihood'."
            raise ValueError(msg)
        encoded = self.encode(images, type_instructions)
        vision = vision or self.vision_features(encoded["pixel_values"], encoded["image_sizes"])
        options = [[[], *([name] for name in names)] for names in candidates]
        option_ids = [
            [
                self.tokenizer(prompts.type_answer(types), add_special_tokens=False)["input_ids"]
                for types in image_options
            ]
            for image_options in options
        ]
        scores = option_log_likelihoods(self.llava, self.prefill_inputs(encoded, vision), option_ids, self.pad_id)
        chosen = [image_options[int(score.argmax())] for image_options, score in zip(options, scores, strict=True)]
        return TypePrediction(chosen, ["likelihood"] * len(chosen), [prompts.type_answer(t) for t in chosen])

    def forward(
        self,
        images: torch.Tensor,
        instructions: Sequence[str] | None = None,
        responses: Sequence[str] | None = None,
    ) -> TeacherForcedOutput | InferenceBatch:
        """Teacher-forced pass in training mode; an ``InferenceBatch`` in eval mode."""
        if self.training:
            if responses is None:
                msg = "GenAU training needs one response per image (the datamodule provides them)."
                raise ValueError(msg)
            return self.teacher_forced(images, instructions, responses)
        return self.inspect(images, instructions).batch
