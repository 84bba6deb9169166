"""GenAU: language-grounded industrial anomaly understanding with a vision-language model.

GenAU fine-tunes LLaVA-OneVision to answer whether, where and what: every answer ends with
``[SEG_defect] [SEG_normal]``, whose final-layer hidden states are anchors; cosine similarity
between projected multi-stage SigLIP patch features and the anchors gives the anomaly map,
and the map maximum is the image score. The answer text rides along in ``explanation``.

Paper: "GenAU: Language-Grounded Industrial Anomaly Understanding with Vision-Language
Models", arXiv 2607.01049.

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib_genau import GenAU
    >>> from anomalib_genau.data import CrossDataset
    >>> datamodule = CrossDataset(source="MVTecAD", target="Visa")  # doctest: +SKIP
    >>> Engine(max_epochs=1).train(GenAU(), datamodule=datamodule)  # doctest: +SKIP

"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import AnomalibDataModule, Batch
from anomalib.deploy import CompressionType
from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Score
from anomalib.models import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import STEP_OUTPUT, OptimizerLRScheduler
from torchvision.transforms.v2 import Resize
from transformers import get_cosine_schedule_with_warmup

from anomalib_genau.data.dataclasses import type_labels
from anomalib_genau.predictions import PredictionWriter
from anomalib_genau.report import CategoryReport

from .loss import GenAULoss
from .metrics import WeightedF1, WeightedPrecision, WeightedRecall
from .torch_model import GenAUModel, VisionFeatures
from .visualizer import GenAUVisualizer

logger = logging.getLogger(__name__)

# Constructor arguments that shape the trained weights or their outputs: a checkpoint only
# loads onto a model built with the same values.
# Validation images that calibrate the INT8_PTQ export: each is a full prefill (~1500 tokens at
# 384 px), so a few images give NNCF's activation ranges thousands of tokens.
CALIBRATION_IMAGES = 16
ARCHITECTURE_ARGUMENTS = (
    "vision_layers",
    "temperature",
    "lora",
    "lora_rank",
    "lora_alpha",
    "train_projector",
    "train_vision",
)


def plain_value(value: Any) -> Any:
    """Lists and tuples compare equal (a checkpoint stores sequences as lists)."""
    return list(value) if isinstance(value, tuple | list) else value


class GenAU(AnomalibModule):
    """GenAU anomalib module.

    Args:
        backbone: Hugging Face id or local directory of a LLaVA-OneVision checkpoint.
        vision_layers: Vision ``hidden_states`` indices of the readout stages; ``None`` scales
            the paper's (7, 13, 19, 26) to the backbone's depth.
        temperature: Similarity temperature (project's choice: 0.07).
        lora_rank: LoRA rank (project's choice: 8).
        lora_alpha: LoRA alpha (project's choice: 16).
        lora_dropout: LoRA dropout (project's choice: 0.05).
        seg_weight: ``lambda`` of the segmentation loss (1.0, "balanced" in the paper).
        tversky_alpha: Tversky false-positive weight (project's choice: 0.3).
        tversky_beta: Tversky false-negative weight (project's choice: 0.7).
        learning_rate: AdamW learning rate (project's choice: 2e-4), no weight decay.
        warmup_ratio: Fraction of steps of linear warm-up before the cosine decay (project's
            choice: 0.03).
        max_new_tokens: Decoding budget of an answer, segmentation tokens included.
        default_object: Object name of the prompt for data without a category (``predict``).
        high_res_readout: Fuse the AnyRes high-resolution readout with the global view at
            inference (paper 4.2); ``False`` reads the global view only.
        high_res_weight: Per-stage weight of the high-res map (project's choice: 0.5).
        score_fusion: Image score = calibrated fusion of the map maximum and the decoder's
            yes/no log-odds (paper Eq. 6); ``False`` is the "map-max only" ablation.
        mixing_weight: Weight of the map term in the fused score (project's choice: 0.5).
        lora: LoRA on the decoder; ``False`` is the "LoRA off" ablation.
        train_projector: Train the multimodal projector (ablation; frozen by default, as in the paper).
        train_vision: Train the vision encoder (ablation; frozen by default, as in the paper).
        defect_type_mode: How test and predict answer "what type is it?" for data that carries
            the product's candidate types: ``"generate"`` (the paper's: a greedy answer to the
            multi-type instruction, mapped by the deterministic parser), ``"likelihood"``
            (the candidate with the highest sequence likelihood, no free generation) or
            ``None`` (not asked).
        reasoning_questions: Free-form questions ("Describe the defect.") asked at test and
            predict time; their answers are appended to ``explanation``. See the README for
            what the model can answer without description data.
        max_reasoning_tokens: Decoding budget of a reasoning answer, segmentation tokens included.
        gradient_checkpointing: Trade compute for activation memory in training (same gradients);
            bf16 is the trainer's ``precision: bf16-mixed``.
        pre_processor: Pre-processor or flag; the default resizes to the backbone's tile size
            (384 x 384 for the real checkpoints); the LLaVA-OneVision processor does the
            normalisation and the AnyRes tiling.
        post_processor: Post-processor or flag.
        evaluator: Evaluator or flag; the default adds pixel AUPRO to anomalib's metrics.
        visualizer: Visualizer or flag; the default captions anomalib's pictures with the answer.

    """

    def __init__(
        self,
        backbone: str = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
        vision_layers: Sequence[int] | None = None,
        temperature: float = 0.07,
        lora_rank: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.05,
        seg_weight: float = 1.0,
        tversky_alpha: float = 0.3,
        tversky_beta: float = 0.7,
        learning_rate: float = 2e-4,
        warmup_ratio: float = 0.03,
        max_new_tokens: int = 24,
        default_object: str = "object",
        high_res_readout: bool = True,
        high_res_weight: float = 0.5,
        score_fusion: bool = True,
        mixing_weight: float = 0.5,
        lora: bool = True,
        train_projector: bool = False,
        train_vision: bool = False,
        defect_type_mode: str | None = "generate",
        reasoning_questions: Sequence[str] | None = None,
        max_reasoning_tokens: int = 48,
        gradient_checkpointing: bool = False,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        # The default pre-processor's size comes from the backbone, which loads below.
        super().__init__(
            pre_processor=False if pre_processor is True else pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.model = GenAUModel(
            backbone=backbone,
            vision_layers=vision_layers,
            temperature=temperature,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            max_new_tokens=max_new_tokens,
            default_object=default_object,
            high_res_readout=high_res_readout,
            high_res_weight=high_res_weight,
            score_fusion=score_fusion,
            mixing_weight=mixing_weight,
            lora=lora,
            train_projector=train_projector,
            train_vision=train_vision,
            gradient_checkpointing=gradient_checkpointing,
        )
        if pre_processor is True:
            self.pre_processor = self.configure_pre_processor((self.model.tile_size,) * 2)
        self.loss = GenAULoss(seg_weight=seg_weight, tversky_alpha=tversky_alpha, tversky_beta=tversky_beta)
        self.learning_rate = learning_rate
        self.warmup_ratio = warmup_ratio
        if defect_type_mode not in {None, "generate", "likelihood"}:
            msg = f"defect_type_mode must be 'generate', 'likelihood' or None, got {defect_type_mode!r}."
            raise ValueError(msg)
        self.defect_type_mode = defect_type_mode
        self.reasoning_questions = list(reasoning_questions or [])
        self.max_reasoning_tokens = max_reasoning_tokens
        self.type_outcomes: Counter[str] = Counter()

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize only: normalisation and tiling belong to the LLaVA-OneVision processor."""
        return PreProcessor(transform=Resize(image_size or (384, 384), antialias=True))

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """The paper's metrics: image and pixel AUROC, AUPRO, F1 scores and the defect types' weighted P/R/F1.

        The type metrics skip batches without types (data that carries no candidates).
        """
        test_metrics = [
            WeightedPrecision(prefix="type_", strict=False),
            WeightedRecall(prefix="type_", strict=False),
            WeightedF1(prefix="type_", strict=False),
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
        ]
        return Evaluator(test_metrics=test_metrics)

    def configure_callbacks(self) -> Sequence[Callback] | Callback:
        """Anomalib's component callbacks plus the per-category test report."""
        callbacks = super().configure_callbacks()
        return [*(callbacks if isinstance(callbacks, Sequence) else [callbacks]), CategoryReport(), PredictionWriter()]

    @classmethod
    def configure_visualizer(cls) -> GenAUVisualizer:
        """Anomalib's panels plus a caption with the answer and the score."""
        return GenAUVisualizer()

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Teacher-forced pass; returns the joint loss and logs its two parts."""
        del args, kwargs
        responses = getattr(batch, "response", None)
        if responses is None or batch.gt_mask is None:
            msg = (
                "GenAU trains on batches with masks and responses: use anomalib_genau.data.CrossDataset "
                "or wrap anomalib datamodules in anomalib_genau.data.GenAUDataModule(source=...)."
            )
            raise ValueError(msg)
        output = self.model(batch.image, getattr(batch, "instruction", None), responses)
        losses = self.loss(output.lm_loss, output.stage_logits, batch.gt_mask)
        self.log_dict({f"train_{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=len(batch.image))
        return losses["loss"]

    def _inspect(self, batch: Batch) -> Batch:
        """Inference on a batch: scores and maps, the answer as ``explanation``, the defect types."""
        inspection = self.model.inspect(batch.image, getattr(batch, "instruction", None))
        fields = {**inspection.batch._asdict(), "explanation": inspection.answers}
        if self.defect_type_mode is not None and getattr(batch, "type_candidates", None) is not None:
            fields.update(self._predict_types(batch, inspection.vision))
        if self.reasoning_questions:
            fields["explanation"] = self._with_reasoning(batch.image, fields["explanation"], inspection.vision)
        return batch.update(**fields)

    def _predict_types(self, batch: Batch, vision: VisionFeatures) -> dict[str, Any]:
        """``pred_types`` (multi-hot) and ``pred_defect_type`` from the multi-type question.

        Raises:
            ValueError: An image's category has no candidate type.

        """
        candidates = [names.split(", ") if names else [] for names in batch.type_candidates]
        for category, names in zip(batch.category or [""] * len(candidates), candidates, strict=True):
            if not names:
                msg = f"No candidate defect types for category '{category}': set defect_type_mode=None for it."
                raise ValueError(msg)
        prediction = self.model.predict_types(
            batch.image, batch.type_instruction, candidates, self.defect_type_mode, vision
        )
        self.type_outcomes.update(prediction.outcomes)
        return {
            "pred_types": torch.stack([type_labels(types) for types in prediction.types]).to(batch.image.device),
            "pred_defect_type": [", ".join(types) for types in prediction.types],
        }

    def _with_reasoning(self, images: torch.Tensor, answers: list[str], vision: VisionFeatures) -> list[str]:
        """Append the answer to each reasoning question: ``"<answer> <question> <reply> ..."``."""
        for question in self.reasoning_questions:
            replies = self.model.decode(images, [question] * len(answers), self.max_reasoning_tokens, vision)[3]
            answers = [f"{answer} {question} {reply}" for answer, reply in zip(answers, replies, strict=True)]
        return answers

    def on_test_epoch_start(self) -> None:
        """Start counting how the multi-type answers were parsed."""
        self.type_outcomes.clear()

    def on_test_epoch_end(self) -> None:
        """Log the multi-type answers that named no candidate or several (the parser's rule decided)."""
        if self.type_outcomes:
            counts = {"none": "type_answers_naming_no_candidate", "several": "type_answers_naming_several"}
            for outcome, name in counts.items():
                self.log(name, float(self.type_outcomes[outcome]), sync_dist=True, reduce_fx="sum")

    @torch.no_grad()
    def calibrate(self, dataloader: Iterable[Batch]) -> None:
        """Estimate the fused score's calibration on source images and freeze it.

        During fitting this runs on the validation dataloader (the held-out part of the source
        test split) before each validation pass, so the PostProcessor's thresholds are set on
        calibrated scores; testing and predicting never call it. Under DDP the scores of every
        process's shard are gathered first.
        """
        was_training = self.model.training
        self.model.eval()
        map_max, log_odds = [], []
        for batch in dataloader:
            images = self.pre_processed(batch.image.to(self.device))
            inspection = self.model.inspect(images, getattr(batch, "instruction", None))
            map_max.append(inspection.map_max)
            log_odds.append(inspection.log_odds)
        scores = torch.stack([torch.cat(map_max), torch.cat(log_odds)])  # (2, N) on this process
        if self._trainer is not None and self.trainer.world_size > 1:
            # every process sees a shard of the validation images (equal sizes: the sampler pads);
            # all estimate from all of them, so the calibration stays identical across processes
            scores = self.all_gather(scores).permute(1, 0, 2).flatten(1)
        self.model.calibration.estimate(scores[0], scores[1])
        self.model.train(was_training)

    def on_validation_epoch_start(self) -> None:
        """While fitting, re-estimate the score calibration on the source validation images.

        It is estimated even with ``score_fusion=False``, so the fused score can be switched on
        for a trained model.
        """
        if self.trainer.state.fn == TrainerFn.FITTING:
            self.calibrate(self.trainer.val_dataloaders)

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Validation predicts maps and scores, from which the PostProcessor sets thresholds."""
        del args, kwargs
        return self._inspect(batch)

    def test_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Test predicts maps, scores and answers."""
        del args, kwargs
        return self._inspect(batch)

    def predict_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Predict fills maps, scores and answers (labels and masks come from the PostProcessor)."""
        del args, kwargs
        return self._inspect(batch)

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """AdamW without weight decay on the trainable parameters, cosine schedule with warm-up."""
        parameters = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=self.learning_rate, weight_decay=0.0)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = get_cosine_schedule_with_warmup(optimizer, round(self.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _trainable_keys(self) -> set[str]:
        """State-dict keys of the parameters training changes."""
        return {name for name, parameter in self.named_parameters() if parameter.requires_grad}

    def _backbone_keys(self, state_dict: dict[str, torch.Tensor]) -> set[str]:
        """Keys of ``state_dict`` that the base backbone restores: its frozen weights and buffers."""
        trainable = self._trainable_keys()
        return {key for key in state_dict if key.startswith("model.vlm.") and key not in trainable}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save only what training changed, plus a reference to the base backbone.

        The frozen backbone weights are left out (they are the backbone's own); kept are the
        LoRA weights, the new-token deltas, the decoder norms, the readout projectors, the
        score calibration and anomalib's post-processing state.
        """
        super().on_save_checkpoint(checkpoint)
        state_dict = checkpoint["state_dict"]
        for key in self._backbone_keys(state_dict):
            del state_dict[key]
        checkpoint["genau_backbone"] = {
            "backbone": str(self.hparams.backbone),
            "fingerprint": self.model.backbone_fingerprint,
            # kept apart from ``hyper_parameters``, which load_from_checkpoint overwrites with its kwargs
            "architecture": {key: plain_value(self.hparams[key]) for key in ARCHITECTURE_ARGUMENTS},
        }

    def _check_architecture(self, saved: dict[str, Any]) -> None:
        """Refuse a checkpoint whose adapter or readout arguments differ from this model's.

        They change the weights' shapes or, silently, the outputs (``lora_alpha``, ``temperature``).
        """
        differing = [
            key
            for key in ARCHITECTURE_ARGUMENTS
            if key in saved and plain_value(saved[key]) != plain_value(self.hparams[key])
        ]
        if differing:
            trained = ", ".join(f"{key}={plain_value(saved[key])}" for key in differing)
            built = ", ".join(f"{key}={plain_value(self.hparams[key])}" for key in differing)
            flags = " ".join(f"--model.{key} {plain_value(saved[key])}" for key in differing)
            msg = (
                f"This checkpoint was trained with {trained}, but the model was built with {built}. "
                f"Pass {flags}, or load it with GenAU.load_from_checkpoint, which restores them."
            )
            raise ValueError(msg)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another backbone; fill the frozen weights from this one's.

        Raises:
            ValueError: The checkpoint was trained on a backbone with other weights, or with
                other adapter or readout arguments.

        """
        reference = checkpoint.get("genau_backbone")
        if reference is not None:
            self._check_architecture(reference.get("architecture", {}))
            if reference["fingerprint"] != self.model.backbone_fingerprint:
                msg = (
                    f"This checkpoint was trained on backbone '{reference['backbone']}' (fingerprint "
                    f"{reference['fingerprint']}), but the model loaded '{self.hparams.backbone}' (fingerprint "
                    f"{self.model.backbone_fingerprint}). Load it with --model.backbone set to its backbone."
                )
                raise ValueError(msg)
            own = self.state_dict()
            state_dict = checkpoint["state_dict"]
            for key in self._backbone_keys(own):
                state_dict.setdefault(key, own[key])
        super().on_load_checkpoint(checkpoint)

    def to_openvino(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        compression_type: CompressionType | None = None,
        datamodule: AnomalibDataModule | None = None,
        *args,
        **kwargs,
    ) -> Path:
        """Export to OpenVINO IR in ``export_root/weights/openvino/`` (what ``anomalib export`` calls).

        GenAU decodes in a loop, so it is exported as several graphs plus a manifest
        (``anomalib_genau.deploy.export``) instead of anomalib's single ONNX-traced graph; load
        it with ``anomalib_genau.deploy.GenAUOpenVINOInferencer``.

        Args:
            export_root: Root folder of the export.
            model_file_name: Unused: GenAU's graphs have fixed names.
            input_size: ``(H, W)`` to export; ``None``: the pre-processor's size.
            compression_type: ``None`` (f32 weights), ``FP16`` or ``INT8`` (NNCF weight
                compression), ``INT8_PTQ`` (NNCF INT8 weights and activations for the decoder,
                calibrated on ``datamodule``'s validation images; INT8 weights elsewhere); INT4
                is ``anomalib-genau export --weights int4``.
            datamodule: ``INT8_PTQ`` only: its first ``CALIBRATION_IMAGES`` validation images
                calibrate the quantization, as anomalib's own INT8_PTQ export does.
            *args: Unused.
            **kwargs: anomalib's other export options; those set are logged as ignored.

        Returns:
            The manifest ``genau.json``.

        Raises:
            ValueError: ``INT8_ACQ`` (accuracy control needs one graph with one metric), or
                ``INT8_PTQ`` without a datamodule.

        """
        del model_file_name, args
        unused = {key for key, value in kwargs.items() if value is not None and key not in {"max_drop", "metric"}}
        if unused:
            logger.warning("GenAU's OpenVINO export ignores %s.", ", ".join(sorted(unused)))
        from anomalib_genau.deploy.export import export_openvino

        compression = CompressionType(compression_type) if compression_type else None
        weights = {
            None: "f32",
            CompressionType.FP16: "fp16",
            CompressionType.INT8: "int8",
            CompressionType.INT8_PTQ: "int8_ptq",
        }.get(compression)
        if weights is None:
            msg = (
                f"GenAU supports OpenVINO compression fp16, int8, int8_ptq (and int4 through "
                f"`anomalib-genau export`), not '{compression.value}'."
            )
            raise ValueError(msg)
        calibration = None
        if weights == "int8_ptq":
            if datamodule is None:
                msg = "GenAU's INT8_PTQ export needs a datamodule: its validation images calibrate the quantization."
                raise ValueError(msg)
            datamodule.setup("fit")
            calibration = self.calibration_images(datamodule.val_dataloader(), CALIBRATION_IMAGES)
        root = Path(export_root) / "weights" / "openvino"
        return export_openvino(self, root, [input_size] if input_size else None, weights, calibration)

    def pre_processed(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` images through the pre-processor's transform, as in testing."""
        if self.pre_processor is not None and self.pre_processor.transform is not None:
            return self.pre_processor.transform(images)
        return images

    def calibration_images(self, dataloader: Iterable[Batch], count: int) -> list[tuple[torch.Tensor, str | None]]:
        """The first ``count`` images of ``dataloader``, pre-processed, with their instructions."""
        images: list[tuple[torch.Tensor, str | None]] = []
        for batch in dataloader:
            pixels = self.pre_processed(batch.image)
            instructions = getattr(batch, "instruction", None) or [None] * len(pixels)
            images.extend(zip(pixels, instructions, strict=True))
            if len(images) >= count:
                break
        return images[:count]

    def to_onnx(self, *args, **kwargs) -> Path:
        """Refused: ONNX holds neither a model over 2 GB nor GenAU's decode loop; use ``to_openvino``."""
        del args, kwargs
        msg = "GenAU cannot be exported to ONNX (2 GB limit, decode loop): use --export_type openvino."
        raise NotImplementedError(msg)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No sanity validation: it would decode before training starts."""
        return {"num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """``ONE_CLASS`` in anomalib's terms, so that anomalib trains and validates it.

        GenAU itself learns from the masks and defect types of a source dataset's test split
        and is zero-shot on the target.
        """
        return LearningType.ONE_CLASS
