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

import inspect
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import anomalib.models
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

from anomalib_genau.data.predict import ReadablePrediction
from anomalib_genau.data.synthetic_anomalies import SyntheticAnomalies
from anomalib_genau.data.unusable_files import SkipUnusableFiles
from anomalib_genau.predictions import PredictionWriter
from anomalib_genau.report import CategoryReport

from . import checkpoint, export
from .loss import GenAULoss
from .metrics import WeightedF1, WeightedPrecision, WeightedRecall
from .questions import BatchQuestions
from .torch_model import GenAUModel
from .visualizer import GenAUVisualizer


class GenAU(AnomalibModule):
    """GenAU anomalib module.

    Args:
        backbone: Hugging Face id or local directory of a LLaVA-OneVision checkpoint.
        vision_layers: Vision ``hidden_states`` indices of the readout stages; ``None`` scales
            the paper's (7, 13, 19, 26) to the backbone's depth.
        visual_tokens: What the decoder reads of an image: ``"anyres"`` (the paper's),
            ``"global"``, ``"pooled"`` or ``"global_pooled"`` (``anomalib_genau.choices``).
        temperature: Similarity temperature.
        lora_rank: LoRA rank.
        lora_alpha: LoRA alpha.
        lora_dropout: LoRA dropout.
        seg_weight: ``lambda`` of the segmentation loss ("balanced" in the paper).
        tversky_alpha: Tversky false-positive weight.
        tversky_beta: Tversky false-negative weight.
        learning_rate: AdamW learning rate, no weight decay.
        decoder_learning_rate: Learning rate of the decoder's LoRA and norms; ``None``: ``learning_rate``.
            The readout's projections and the new token rows keep ``learning_rate``.
        warmup_ratio: Fraction of the steps of linear warm-up before the cosine decay.
        max_new_tokens: Decoding budget of an answer, segmentation tokens included.
        default_object: Object name of the prompt for data without a category.
        high_res_readout: Fuse the AnyRes high-resolution readout with the global view (paper 4.2).
        high_res_weight: Per-stage weight of the high-res map.
        score_fusion: Image score = calibrated fusion of the map maximum and the yes/no
            log-odds (paper Eq. 6); ``False``: the map maximum.
        mixing_weight: Weight of the map term in the fused score.
        lora: LoRA on the decoder (``False``: the "LoRA off" ablation).
        train_projector: Train the multimodal projector (frozen in the paper).
        train_vision: Train the vision encoder (frozen in the paper).
        defect_type_mode: How the type question is answered where the batch carries candidate
            types: ``"generate"`` (the paper's parsed greedy answer), ``"likelihood"`` (the
            candidate of highest sequence likelihood) or ``None`` (not asked).
        reasoning_questions: Free-form questions whose answers are appended to ``explanation``.
        max_reasoning_tokens: Decoding budget of a reasoning answer.
        anomaly_probability: One-class training (batches without responses): the chance that a
            normal image gets a synthetic Perlin anomaly (anomalib's DRAEM generator).
        anomaly_source_path: One-class training: textures for the anomalies (e.g. DTD); ``None`` generates them.
        max_epochs: Epochs anomalib's Engine trains for (its Benchmark pipeline passes no trainer arguments).
        gradient_checkpointing: Trade compute for activation memory in training.
        image_size: ``(H, W)`` of the default pre-processor; ``None``: the backbone's tile size.
        pre_processor: Pre-processor or flag; the default resizes only (the LLaVA-OneVision
            processor normalises and tiles).
        post_processor: Post-processor or flag.
        evaluator: Evaluator or flag; the default adds AUPRO and the type metrics.
        visualizer: Visualizer or flag; the default captions the pictures with the answer.

    Which defaults are the project's choices rather than the paper's: the model's README (``models/genau/README.md``).

    """

    def __init__(
        self,
        backbone: str = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
        vision_layers: Sequence[int] | None = None,
        visual_tokens: str = "anyres",
        temperature: float = 0.07,
        lora_rank: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.05,
        seg_weight: float = 1.0,
        tversky_alpha: float = 0.3,
        tversky_beta: float = 0.7,
        learning_rate: float = 2e-4,
        decoder_learning_rate: float | None = None,
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
        anomaly_probability: float = 0.5,
        anomaly_source_path: str | None = None,
        max_epochs: int | None = None,
        gradient_checkpointing: bool = False,
        image_size: Sequence[int] | None = None,
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
            visual_tokens=visual_tokens,
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
            size = (int(image_size[0]), int(image_size[1])) if image_size else (self.model.tile_size,) * 2
            self.pre_processor = self.configure_pre_processor(size)
        self.loss = GenAULoss(seg_weight=seg_weight, tversky_alpha=tversky_alpha, tversky_beta=tversky_beta)
        self.synthetic_anomalies = SyntheticAnomalies(anomaly_probability, anomaly_source_path)
        self.max_epochs = max_epochs
        self.learning_rate = learning_rate
        self.decoder_learning_rate = learning_rate if decoder_learning_rate is None else decoder_learning_rate
        self.warmup_ratio = warmup_ratio
        self.questions = BatchQuestions(defect_type_mode, reasoning_questions or [], max_reasoning_tokens)

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
        """Anomalib's component callbacks, usable and readable data, the per-category report and predictions file."""
        callbacks = super().configure_callbacks()
        own = [SkipUnusableFiles(), ReadablePrediction(), CategoryReport(), PredictionWriter()]
        return [*(callbacks if isinstance(callbacks, Sequence) else [callbacks]), *own]

    @classmethod
    def configure_visualizer(cls) -> GenAUVisualizer:
        """Anomalib's panels plus a caption with the answer and the score."""
        return GenAUVisualizer()

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Teacher-forced pass; returns the joint loss and logs its two parts.

        Batches with responses (``CrossDataset``, ``GenAUDataModule``) train on their masks and
        dialogue. Batches without (an anomalib datamodule's train split: normal images only)
        train one-class: synthetic anomalies are drawn on them, as DRAEM does in its
        ``training_step``, and every image gets the canonical question and its binary answer.
        """
        del args, kwargs
        responses = getattr(batch, "response", None)
        if responses is None:
            self.synthetic_anomalies.check_normal(batch.gt_label)
            images, masks = self.synthetic_anomalies(batch.image)
            responses = self.synthetic_anomalies.responses(self.model.codec.default_object, masks)
            instructions = None
        else:
            images, masks, instructions = batch.image, batch.gt_mask, getattr(batch, "instruction", None)
        output = self.model(images, instructions, responses)
        losses = self.loss(output.lm_loss, output.stage_logits, masks)
        self.log_dict({f"train_{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=len(batch.image))
        return losses["loss"]

    @property
    def defect_type_mode(self) -> str | None:
        """How test and predict answer the type question (``None``: not asked)."""
        return self.questions.defect_type_mode

    @defect_type_mode.setter
    def defect_type_mode(self, mode: str | None) -> None:
        self.questions.defect_type_mode = mode

    def _inspect(self, batch: Batch) -> Batch:
        """Inference on a batch: scores and maps, the answer as ``explanation``, the defect types."""
        return batch.update(**self.questions.answer(self.model, batch))

    def on_test_epoch_start(self) -> None:
        """Start counting how the multi-type answers were parsed."""
        self.questions.type_outcomes.clear()

    def on_test_epoch_end(self) -> None:
        """Log how many multi-type answers named no candidate or several (the parser's rule decided)."""
        for name, count in self.questions.outcome_counts().items():
            self.log(name, count, sync_dist=True, reduce_fx="sum")

    @torch.no_grad()
    def calibrate(self, dataloader: Iterable[Batch]) -> None:
        """Estimate the fused score's calibration on source images and freeze it.

        Runs on the validation images before each validation pass while fitting, so that the
        PostProcessor's thresholds see calibrated scores; under DDP every process's shard is
        gathered first. It cannot reuse the validation pass's decoding: the PostProcessor
        accumulates each batch's ``pred_score`` as the batch ends, already under this calibration.
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
        """AdamW without weight decay on the trainable parameters, cosine schedule with warm-up.

        Two groups: the decoder's LoRA and norms at ``decoder_learning_rate``, everything else
        (readout, new token rows, projector or tower when trained) at ``learning_rate``.
        """
        decoder, rest = [], []
        for name, parameter in self.named_parameters():
            if parameter.requires_grad:
                in_decoder = ".language_model." in name and "trainable_tokens" not in name
                (decoder if in_decoder else rest).append(parameter)
        groups = [
            {"params": params, "lr": lr}
            for params, lr in ((decoder, self.decoder_learning_rate), (rest, self.learning_rate))
            if params
        ]
        optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = get_cosine_schedule_with_warmup(optimizer, round(self.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def trainable_keys(self) -> set[str]:
        """State-dict keys of the parameters training changes."""
        return {name for name, parameter in self.named_parameters() if parameter.requires_grad}

    def inference_settings(self) -> dict[str, Any]:
        """The inference switches in use (``checkpoint.INFERENCE_SETTINGS``)."""
        return {
            "score_fusion": self.model.score_fusion,
            "high_res_readout": self.model.high_res_readout,
            "defect_type_mode": self.defect_type_mode,
            "max_new_tokens": self.model.max_new_tokens,
        }

    def apply_inference_settings(self, settings: dict[str, Any]) -> None:
        """Set inference switches (``checkpoint.INFERENCE_SETTINGS``) on the model and in ``hparams``."""
        for key, value in settings.items():
            owner = self if key == "defect_type_mode" else self.model
            setattr(owner, key, value)
            self.hparams[key] = value

    def on_save_checkpoint(self, checkpoint_dict: dict[str, Any]) -> None:
        """Save only what training changed, plus the base backbone and the settings in use (``checkpoint``)."""
        super().on_save_checkpoint(checkpoint_dict)
        checkpoint.slim_state_dict(checkpoint_dict["state_dict"], self.trainable_keys())
        checkpoint_dict[checkpoint.BACKBONE_ENTRY] = checkpoint.backbone_reference(
            str(self.hparams.backbone), self.model.backbone_fingerprint, self.hparams, self.inference_settings()
        )

    def on_load_checkpoint(self, checkpoint_dict: dict[str, Any]) -> None:
        """Refuse another backbone or architecture, fill the frozen weights, restore default inference settings.

        Raises:
            ValueError: Another backbone, or other adapter or readout arguments (``checkpoint``).

        """
        state = self.state_dict()
        reference = checkpoint.load_reference(
            checkpoint_dict, self.hparams, self.model.backbone_fingerprint, state, self.trainable_keys()
        )
        if reference is not None:
            defaults = {key: inspect.signature(GenAU).parameters[key].default for key in checkpoint.INFERENCE_SETTINGS}
            saved = reference.get("inference", {})
            self.apply_inference_settings(checkpoint.settings_to_restore(saved, self.inference_settings(), defaults))
        super().on_load_checkpoint(checkpoint_dict)

    def export_openvino(
        self,
        export_root: Path | str,
        image_sizes: Sequence[Sequence[int]] | None = None,
        weights: str = "f32",
        quantization_images: Iterable[tuple[torch.Tensor, str | None]] | None = None,
    ) -> Path:
        """Write GenAU's OpenVINO export (``export.export_module``); sizes default to the pre-processor's."""
        return export.export_module(self, export_root, image_sizes, weights, quantization_images)

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
        """What ``anomalib export`` calls: GenAU's graphs and manifest in ``export_root/weights/openvino/``.

        GenAU decodes in a loop, so it is exported as several graphs (``anomalib_genau.deploy``)
        instead of anomalib's single traced graph; see ``export.anomalib_export`` for how
        anomalib's options map onto it. ``model_file_name`` is unused (the graphs have fixed names).
        """
        del model_file_name, args
        return export.anomalib_export(self, export_root, input_size, compression_type, datamodule, kwargs)

    def pre_processed(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` images through the pre-processor's transform, as in testing."""
        if self.pre_processor is not None and self.pre_processor.transform is not None:
            return self.pre_processor.transform(images)
        return images

    def to_onnx(self, *args, **kwargs) -> Path:
        """Refused: ONNX holds neither a model over 2 GB nor GenAU's decode loop; use ``to_openvino``."""
        del args, kwargs
        msg = "GenAU cannot be exported to ONNX (2 GB limit, decode loop): use --export_type openvino."
        raise NotImplementedError(msg)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No sanity validation (it would decode before training starts); ``max_epochs`` when set."""
        return {"num_sanity_val_steps": 0, **({"max_epochs": self.max_epochs} if self.max_epochs else {})}

    @property
    def learning_type(self) -> LearningType:
        """``ONE_CLASS`` in anomalib's terms, so that anomalib trains and validates it.

        GenAU itself learns from the masks and defect types of a source dataset's test split
        and is zero-shot on the target.
        """
        return LearningType.ONE_CLASS


# get_model({"class_path": "GenAU"}) looks the name up on anomalib.models (dotted paths outside
# anomalib.models are refused by its ALLOWED_MODULES), so importing this module exposes it there.
if not hasattr(anomalib.models, "GenAU"):
    anomalib.models.GenAU = GenAU
