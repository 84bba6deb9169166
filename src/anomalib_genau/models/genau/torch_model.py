"""PyTorch model of GenAU: a LLaVA-OneVision VLM whose segmentation tokens ground a pixel map.

Shapes: ``B`` images of ``(3, H, W)`` in ``[0, 1]``; ``L`` tokens; ``D`` decoder width;
``C`` vision width; ``S`` vision stages; the global view is an ``h x w`` patch grid
(``image_size / patch_size`` per side, 27 x 27 for SigLIP-so400m at 384 px). Text goes in
and out through the :class:`~anomalib_genau.dialogue.DialogueCodec`.
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

from anomalib_genau import prompts
from anomalib_genau.backbone import load_backbone
from anomalib_genau.dialogue import DialogueCodec, Prompts

from .anyres import reassemble_tiles
from .calibration import ScoreCalibration
from .decoding import DecodeResult, anchor_states
from .readout import AnchorReadout, anomaly_map, pad_maps
from .torch_decoding import decode_with_anchors, option_log_likelihoods
from .vision import VisionFeatures, check_visual_tokens, encode_views, rgb_images
from .vlm import add_segmentation_tokens, apply_adapters, backbone_fingerprint

logger = logging.getLogger(__name__)

# Paper default stages for SigLIP-so400m as LLaVA-OneVision keeps it (26 layers): hidden_states
# indices 7, 13, 19 and the last; other depths scale these fractions.
PAPER_STAGE_FRACTIONS = (7 / 26, 13 / 26, 19 / 26, 1.0)
TYPE_MODES = ("generate", "likelihood")


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
class Answers:
    """Greedy answers to one question per image: the decoding's tensors and the texts."""

    decoded: DecodeResult
    texts: list[str]


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


class GenAUModel(nn.Module):
    """LLaVA-OneVision with ``[SEG_defect]``/``[SEG_normal]`` anchors and a multi-stage readout.

    Args:
        backbone: Hugging Face id or local directory of a LLaVA-OneVision checkpoint.
        vision_layers: Vision stages of the readout; ``None`` scales the paper's four stages.
        visual_tokens: What the decoder reads of an image (``choices.VISUAL_TOKENS``; the
            paper's ``"anyres"``, see ``vision.image_features``); the readout reads every view.
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
        visual_tokens: str = "anyres",
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
        self.visual_tokens = check_visual_tokens(visual_tokens)
        llava, self.processor = load_backbone(backbone)
        if gradient_checkpointing:
            # non-reentrant: gradients reach LoRA weights although the layer inputs need none
            llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.backbone_fingerprint = backbone_fingerprint(llava)
        seg_ids = add_segmentation_tokens(llava, self.processor.tokenizer)
        self.codec = DialogueCodec(self.processor, default_object)
        self.vlm = apply_adapters(
            llava,
            sorted(seg_ids),  # peft orders the trainable rows as given: by id
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
        self.high_res_readout = high_res_readout
        self.high_res_weight = high_res_weight
        self.score_fusion = score_fusion
        self.calibration = ScoreCalibration(mixing_weight)
        self.warned_uncalibrated = False
        self.train()  # from_pretrained leaves the backbone in eval mode; LoRA dropout needs train mode

    @property
    def llava(self) -> LlavaOnevisionForConditionalGeneration:
        """The LLaVA-OneVision model, with the LoRA layers injected."""
        return self.vlm.get_base_model()

    @property
    def device(self) -> torch.device:
        """Where the trainable readout (and so the model) lives."""
        return self.readout.projections[0].weight.device

    def see(self, images: torch.Tensor | Sequence[torch.Tensor]) -> VisionFeatures:
        """The image processor and the vision tower, once per image, however many questions follow.

        Args:
            images: ``(B, 3, H, W)`` in ``[0, 1]``, or a list of ``(3, H_i, W_i)`` of different
                sizes (each gets its own AnyRes grid; the processor pads the view lists).

        """
        pixels = [image.detach().float().clamp(0, 1).cpu() for image in rgb_images(images)]
        processed = self.processor.image_processor(images=pixels, return_tensors="pt", do_rescale=False)
        return encode_views(
            self.llava,
            processed["pixel_values"].to(self.device),
            processed["image_sizes"].tolist(),
            self.vision_layers,
            self.visual_tokens,
        )

    def prompts(self, vision: VisionFeatures, instructions: Sequence[str] | None) -> Prompts:
        """Each image's question, its image tokens sized to its features; ``None``: the canonical prompt."""
        texts = self.codec.instructions(instructions, len(vision.image_features))
        prompts = self.codec.prompts(texts, vision.token_counts)
        return Prompts(prompts.input_ids.to(self.device), prompts.attention_mask.to(self.device))

    @staticmethod
    def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
        """Positions that skip padding, so left and right padding give the same states."""
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    @staticmethod
    def image_inputs(vision: VisionFeatures) -> dict:
        """``mm_encoder_outputs`` of the decoder's forward: the image features already computed."""
        return {"image": BaseModelOutputWithPooling(pooler_output=vision.image_features)}

    def prefill_inputs(self, prompts: Prompts, vision: VisionFeatures) -> dict:
        """Keyword arguments of the prefill forward, with the vision output already computed."""
        return {
            "input_ids": prompts.input_ids,
            "attention_mask": prompts.attention_mask,
            "position_ids": self.position_ids(prompts.attention_mask),
            "mm_encoder_outputs": self.image_inputs(vision),
        }

    def append_responses(self, prompts: Prompts, responses: Sequence[str]) -> tuple[torch.Tensor, ...]:
        """Append each response after its (left-padded) prompt and right-pad.

        Returns:
            ``input_ids``, ``attention_mask`` and ``labels``, each ``(B, L + R)``; labels are
            ``-100`` on the prompt, the image tokens and the padding.

        """
        response_ids = [self.codec.response_ids(text) for text in responses]
        width = max(len(ids) for ids in response_ids)
        appended = torch.full((len(response_ids), width), self.codec.pad_id, dtype=torch.long)
        appended_mask = torch.zeros_like(appended)
        for row, ids in enumerate(response_ids):
            appended[row, : len(ids)] = torch.tensor(ids)
            appended_mask[row, : len(ids)] = 1
        prompt_ids = prompts.input_ids
        appended, appended_mask = appended.to(prompt_ids.device), appended_mask.to(prompt_ids.device)
        input_ids = torch.cat([prompt_ids, appended], dim=1)
        attention_mask = torch.cat([prompts.attention_mask, appended_mask], dim=1)
        labels = torch.cat([torch.full_like(prompt_ids, -100), appended.masked_fill(appended_mask == 0, -100)], dim=1)
        return input_ids, attention_mask, labels

    def teacher_forced(
        self, images: torch.Tensor, instructions: Sequence[str] | None, responses: Sequence[str]
    ) -> TeacherForcedOutput:
        """One teacher-forced pass: LM loss on the response tokens and the stage logits."""
        vision = self.see(images)
        input_ids, attention_mask, labels = self.append_responses(self.prompts(vision, instructions), responses)
        output = self.llava(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=self.position_ids(attention_mask),
            mm_encoder_outputs=self.image_inputs(vision),
            labels=labels,
            output_hidden_states=True,
        )
        anchors = anchor_states(output.hidden_states[-1], input_ids, self.codec.seg_ids)
        return TeacherForcedOutput(
            lm_loss=output.loss, stage_logits=self.readout(vision.global_stages, anchors, self.grid)
        )

    @torch.no_grad()
    def ask(
        self, vision: VisionFeatures, instructions: Sequence[str] | None, max_new_tokens: int | None = None
    ) -> Answers:
        """Greedy answers to one question per image, on an earlier vision pass; only the prompts are encoded."""
        decoded = decode_with_anchors(
            self.llava,
            self.prefill_inputs(self.prompts(vision, instructions), vision),
            self.codec.seg_ids,
            self.codec.banned_ids,
            self.codec.pad_id,
            max_new_tokens or self.max_new_tokens,
        )
        return Answers(decoded, self.codec.texts(decoded.answer_tokens))

    def high_res_grids(self, vision: VisionFeatures, index: int) -> list[torch.Tensor]:
        """Image ``index``'s stage features on its reassembled AnyRes grid: per stage ``(h, w, C)``."""
        pinpoints = self.llava.config.image_grid_pinpoints
        size = vision.image_sizes[index]
        return [reassemble_tiles(stage, size, pinpoints, self.tile_size) for stage in vision.tile_stages[index]]

    def high_res_logits(self, vision: VisionFeatures, anchors: torch.Tensor) -> list[torch.Tensor]:
        """Readout on each image's reassembled AnyRes grid: per image ``(S, 1, 2, h_i, w_i)``."""
        logits = []
        for index in range(len(vision.tile_stages)):
            grids = self.high_res_grids(vision, index)
            height, width = grids[0].shape[:2]
            features = [grid.reshape(1, height * width, -1) for grid in grids]
            logits.append(self.readout(features, anchors[index : index + 1], (height, width)))
        return logits

    def anomaly_maps(self, vision: VisionFeatures, anchors: torch.Tensor) -> torch.Tensor:
        """Anomaly maps ``(B, 1, max H, max W)`` in ``[0, 1]`` from one vision pass and the ``(B, 2, D)`` anchors.

        Images of one size give ``(B, 1, H, W)``; of different sizes, each map is computed at its
        own size and zero-padded at the bottom and right (maps are ``>= 0``).
        """
        logits = self.readout(vision.global_stages, anchors, self.grid)
        high_res = self.high_res_logits(vision, anchors) if self.high_res_readout else None
        sizes = [tuple(size) for size in vision.image_sizes]
        if len(set(sizes)) == 1:
            return anomaly_map(logits, sizes[0], high_res, self.high_res_weight)
        return pad_maps(
            [
                anomaly_map(logits[:, i : i + 1], size, high_res and high_res[i : i + 1], self.high_res_weight)
                for i, size in enumerate(sizes)
            ]
        )

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
        vision = self.see(images)
        answers = self.ask(vision, instructions)
        maps = self.anomaly_maps(vision, answers.decoded.anchors)
        map_max = maps.flatten(1).amax(dim=1)
        log_odds = self.codec.log_odds(answers.decoded.first_logits)
        batch = InferenceBatch(pred_score=self.image_score(map_max, log_odds), anomaly_map=maps)
        return Inspection(batch, answers.texts, answers.decoded.forced, map_max, log_odds, vision)

    @torch.no_grad()
    def predict_types(
        self,
        vision: VisionFeatures,
        type_instructions: Sequence[str],
        candidates: Sequence[Sequence[str]],
        mode: str = "generate",
    ) -> TypePrediction:
        """Answer the product-conditioned multi-type question (paper 4.4) on an earlier vision pass.

        Args:
            vision: The vision pass of the images (``see`` or the binary question's).
            type_instructions: The multi-type instruction of each image.
            candidates: Each image's candidate types (taxonomy names).
            mode: ``"generate"``: greedy answer mapped by the deterministic parser;
                ``"likelihood"``: the option (``normal`` or a candidate) whose answer text has
                the highest sequence log-likelihood, with no free generation.

        """
        if mode not in TYPE_MODES:
            msg = f"Unknown defect type mode '{mode}'; use 'generate' or 'likelihood'."
            raise ValueError(msg)
        if mode == "generate":
            texts = self.ask(vision, type_instructions).texts
            parsed = [self.codec.defect_types(text, names) for text, names in zip(texts, candidates, strict=True)]
            return TypePrediction([p.types for p in parsed], [p.outcome for p in parsed], texts)
        options = [self.codec.type_options(names) for names in candidates]
        prefill = self.prefill_inputs(self.prompts(vision, type_instructions), vision)
        scores = option_log_likelihoods(
            self.llava, prefill, [self.codec.option_ids(o) for o in options], self.codec.pad_id
        )
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
