"""Run an OpenVINO export of GenAU on images: score, map, mask, label, defect type and explanation.

Sizes: an export holds one or more ``(H, W)`` sizes (by default the pre-processor's, the size
GenAU was trained and tested at). Each image is resized, as anomalib's pre-processor does, to
the exported size whose aspect ratio is nearest its own; the outputs are at that size, like
anomalib's ``OpenVINOInferencer``. The size fixes the AnyRes grid: LLaVA-OneVision picks the
``image_grid_pinpoints`` entry that fits the size best (384x384 -> one 384 tile + the global
view; 384x768 -> 1x2 tiles + global view); ``genau.json`` lists the sizes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch
from PIL import Image
from torchvision.transforms.v2.functional import resize
from transformers import LlavaOnevisionProcessor

from anomalib_genau import prompts
from anomalib_genau.data.images import check_patch_size, read_rgb
from anomalib_genau.dialogue import DialogueCodec, check_context
from anomalib_genau.models.genau.anyres import distinct_views
from anomalib_genau.models.genau.checkpoint import LEGACY_ARCHITECTURE, differing_keys
from anomalib_genau.models.genau.decoding import DecodeResult, Draft, drafted_decode, greedy_anchor_decode
from anomalib_genau.taxonomy import DATASET_KEYS, object_name, product_candidates

from .decoder_inputs import PromptTree, decoder_inputs, step_mask
from .manifest import FORMAT_VERSION, MANIFEST, PRECISIONS, RT_INFO_KEY, size_name
from .memory import drop_mapped_pages

logger = logging.getLogger(__name__)

# One image's vision pass (:meth:`GenAUOpenVINOInferencer.see`): the decoder's image features
# ``(T, D)`` and the readout's stage features ``(S, P, N, C)``.
Vision = tuple[np.ndarray, np.ndarray]


@dataclass
class Question:
    """A question's prompt in the decoder's cache after :meth:`GenAUOpenVINOInferencer._prefill`.

    Attributes:
        visible: ``(T,)`` bool over the prefill's positions: the ones its answer reads (its prompt's).
        length: Its prompt's tokens, the position of its first answer token.
        logits: ``(B, V)`` next-token logits after its prompt.
        drafts: The answers the prefill fed after its prompt (``drafted_decode``).

    """

    visible: np.ndarray
    length: int
    logits: torch.Tensor
    drafts: list[Draft] = field(default_factory=list)


@dataclass
class Prefill:
    """The prompts of one decoder pass.

    Attributes:
        questions: Each prompt's :class:`Question`, in order.
        option_scores: ``(B, K)`` summed log-probabilities of each option's tokens after the last
            prompt (``K`` is 0 without options).

    """

    questions: list[Question]
    option_scores: np.ndarray


class ExportError(ValueError):
    """An export folder is incomplete, corrupt or from another configuration."""


@dataclass
class GenAUPrediction:
    """One image's answer, its fields named as in anomalib's batches and ``predictions.jsonl``.

    Attributes:
        pred_score: Post-processed image score in ``[0, 1]`` (0.5 is the threshold).
        pred_label: True for anomalous.
        anomaly_map: ``(H, W)`` float32 post-processed map at the exported size.
        pred_mask: ``(H, W)`` bool mask at the exported size.
        pred_defect_type: The predicted types (``[]``: normal); ``None`` when not asked (no
            category, or the taxonomy has no candidates for it).
        explanation: The answer to the inspection question.
        input_size: ``(H, W)`` the image was resized to.

    """

    pred_score: float
    pred_label: bool
    anomaly_map: np.ndarray
    pred_mask: np.ndarray
    pred_defect_type: list[str] | None
    explanation: str
    input_size: tuple[int, int]

    def summary(self) -> dict[str, Any]:
        """The JSON-friendly fields (no arrays): the record of ``predictions.jsonl`` plus ``input_size``."""
        record = asdict(self)
        del record["anomaly_map"], record["pred_mask"]
        return record


class GenAUOpenVINOInferencer:
    """Load a GenAU OpenVINO export and answer images with it.

    Args:
        path: The export folder, or its ``genau.json``.
        device: OpenVINO device (``"CPU"``).
        precision: ``"f32"`` (tested to match torch within 1e-3) or ``"bf16"`` (faster on CPUs
            with bf16; tested to keep maps within 5e-2).
        expected_configuration: If given, the export's configuration must equal it (for
            example a checkpoint's ``genau_backbone["architecture"]`` plus backbone keys);
            only the keys given are compared.
        config: Further OpenVINO properties every graph is compiled with, over GenAU's own (as
            ``config`` of anomalib's ``OpenVINOInferencer``), e.g. ``INFERENCE_NUM_THREADS`` or
            ``DYNAMIC_QUANTIZATION_GROUP_SIZE`` (the group size of the CPU plugin's INT8
            activations for INT8 or INT4 weights; ``benchmarks/deployment.py --dq-group-size``
            measures it, see benchmarks/RESULTS.md).

    Raises:
        ExportError: A file is missing or corrupt, or the graphs come from another configuration.

    """

    def __init__(
        self,
        path: str | Path,
        device: str = "CPU",
        precision: str = "f32",
        expected_configuration: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            msg = f"Unknown precision '{precision}'; use 'f32' or 'bf16'."
            raise ValueError(msg)
        path = Path(path)
        self.root = path.parent if path.suffix == ".json" else path
        self.manifest = self._read_manifest()
        if expected_configuration is not None:
            self._check_configuration(expected_configuration)
        self.device = device
        # the decoder's KV cache in the inference precision (OpenVINO's CPU default is u8, ~1% off)
        self.config = {
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",
            "KV_CACHE_PRECISION": precision,
            **(config or {}),
        }
        files = self.manifest["files"]
        # the decoder first: its compilation needs the most transient memory (about its weights in bf16)
        self.embeddings = self._load(files["embeddings"])
        self.language_model = self._load(files["language_model"])
        token = np.zeros((1, 1), dtype=np.int64)
        mask = step_mask(np.zeros((1, 0), dtype=bool), np.ones((1, 1), dtype=bool))
        self._settle(self.language_model, decoder_inputs(self.embeddings([token])[0], mask, token, np.zeros(1)))
        self.decoder_request = self.language_model.create_infer_request()  # holds the KV-cache states
        self.cache_length = 0  # the positions in the decoder's states
        self.vision_tower = self._load(files["vision_tower"])
        tile = self.manifest["tile_size"]
        self._settle(self.vision_tower, [np.zeros((1, 3, tile, tile), dtype=np.float32)])
        self.sizes = [tuple(size) for size in self.manifest["sizes"]]
        self.image_features = {size: self._load(files[f"image_features_{size_name(size)}"]) for size in self.sizes}
        self.readouts = {size: self._load(files[f"readout_{size_name(size)}"]) for size in self.sizes}
        try:
            self.processor = LlavaOnevisionProcessor.from_pretrained(self.root / "processor")
        except (OSError, ValueError) as error:
            msg = f"Cannot load the processor of the export from {self.root / 'processor'}: {error}"
            raise ExportError(msg) from error
        self.codec = DialogueCodec(self.processor, self.manifest["default_object"])
        self.patch_size = self.manifest["patch_size"]
        self.warned_categories: set[str] = set()
        drop_mapped_pages(self._mapped_folders())

    def _read_manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST
        if not path.is_file():
            msg = (
                f"No GenAU export at {self.root}: {MANIFEST} is missing (export with `anomalib export --model GenAU`)."
            )
            raise ExportError(msg)
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            msg = f"{path} is not valid JSON: {error}"
            raise ExportError(msg) from error
        if manifest.get("format") != FORMAT_VERSION:
            msg = (
                f"The export at {self.root} has format {manifest.get('format')}, this anomalib-genau reads format "
                f"{FORMAT_VERSION}: export the checkpoint again."
            )
            raise ExportError(msg)
        return manifest

    def _check_configuration(self, expected: dict[str, Any]) -> None:
        exported = {**LEGACY_ARCHITECTURE, **self.manifest["configuration"]}
        differing = differing_keys(expected, exported)
        if differing:
            got = ", ".join(f"{key}={exported.get(key)!r}" for key in sorted(differing))
            wanted = ", ".join(f"{key}={expected[key]!r}" for key in sorted(differing))
            msg = f"The export at {self.root} was made with {got}, but this inferencer expects {wanted}."
            raise ExportError(msg)

    def _load(self, name: str) -> ov.CompiledModel:
        """Read and compile one graph; refuse one of another export.

        Compiled without anomalib's ``OpenVINOInferencer.load_model``: it always caches compiled
        blobs in ``./openvino_cache``, and a graph of the same structure with other weights (a
        re-export) was then served a stale blob here (wrong outputs, a crash).
        """
        xml = self.root / name
        for file in (xml, xml.with_suffix(".bin")):
            if not file.is_file():
                msg = f"The GenAU export at {self.root} is missing {file.name}."
                raise ExportError(msg)
        core = ov.Core()
        try:
            model = core.read_model(xml)
        except RuntimeError as error:
            msg = f"Cannot read the OpenVINO graph {xml}: {str(error).splitlines()[0]}"
            raise ExportError(msg) from error
        config_id = model.get_rt_info(RT_INFO_KEY).astype(str) if model.has_rt_info(RT_INFO_KEY) else None
        if config_id != self.manifest["config_id"]:
            msg = (
                f"{xml} was exported from configuration {config_id}, but {self.root / MANIFEST} describes "
                f"configuration {self.manifest['config_id']}: the folder mixes files of two exports."
            )
            raise ExportError(msg)
        return core.compile_model(model, self.device, self.config)

    def _mapped_folders(self) -> list[Path]:
        """Where the graphs' weights are mapped from: the export, and OpenVINO's ``CACHE_DIR`` if set."""
        cache = self.config.get("CACHE_DIR")
        return [self.root, *([Path(cache)] if cache else [])]

    def _settle(self, graph: ov.CompiledModel, inputs: list[np.ndarray] | dict[str, np.ndarray]) -> None:
        """One throw-away inference, so that the CPU plugin lays out the weights now; then drop the mapped files.

        Graph by graph, so that the largest resident memory holds one graph's file pages, not all
        of them (``memory.drop_mapped_pages``).
        """
        graph.create_infer_request().infer(inputs)
        drop_mapped_pages(self._mapped_folders())

    def prepare(self, image: str | Path | np.ndarray | Image.Image | torch.Tensor) -> torch.Tensor:
        """The image as ``(3, H, W)`` float in ``[0, 1]``, resized to the nearest exported size.

        Raises:
            ValueError: Not an image, a channel count other than 1 or 3, or smaller than a patch.

        """
        name = str(image) if isinstance(image, str | Path) else f"the {type(image).__name__} input"
        if isinstance(image, str | Path):
            tensor = read_rgb(image)
        elif isinstance(image, Image.Image):
            tensor = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
        elif isinstance(image, np.ndarray):
            array = image[..., None] if image.ndim == 2 else image
            if array.ndim != 3:
                msg = f"{name} must be (H, W) or (H, W, C), got shape {image.shape}."
                raise ValueError(msg)
            scale = 255.0 if array.dtype == np.uint8 else 1.0
            tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) / scale).permute(2, 0, 1)
        elif isinstance(image, torch.Tensor):
            tensor = image[0] if image.ndim == 4 and image.shape[0] == 1 else image
        else:
            msg = f"Cannot read an image from {type(image).__name__}; give a path, a PIL image, an array or a tensor."
            raise TypeError(msg)
        if tensor.ndim != 3 or tensor.shape[0] not in {1, 3}:
            msg = f"{name} must have 1 or 3 channels, got shape {tuple(tensor.shape)}."
            raise ValueError(msg)
        check_patch_size(tensor, self.patch_size, name)
        size = self.nearest_size(tuple(tensor.shape[-2:]))
        return resize(tensor.float().expand(3, -1, -1), list(size), antialias=True).clamp(0, 1)

    def nearest_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The exported ``(H, W)`` whose aspect ratio is nearest the image's (log ratio)."""
        aspect = np.log(image_size[1] / image_size[0])
        return min(self.sizes, key=lambda size: abs(np.log(size[1] / size[0]) - aspect))

    def predict(
        self,
        image: str | Path | np.ndarray | Image.Image | torch.Tensor,
        category: str | None = None,
        dataset: str | None = "MVTecAD",
        candidates: list[str] | None = None,
        defect_type: bool = True,
    ) -> GenAUPrediction:
        """Answer one image.

        Args:
            image: A path, PIL image, ``(H, W[, C])`` array (uint8 or float in ``[0, 1]``) or ``(C, H, W)`` tensor.
            category: The product (``"carpet"``): named in the prompt and, when the taxonomy knows
                it, asked for its defect type among its candidates.
            dataset: Taxonomy of ``category`` (``MVTecAD``, ``Visa``, ``MPDD``, ``RealIAD``).
            candidates: The defect types to choose among, instead of the taxonomy's for ``category``.
            defect_type: ``False`` leaves the type question out (``pred_defect_type`` ``None``): the
                label, score, map and answer are the same, and the one prefill pass shorter
                (benchmarks/RESULTS.md).

        """
        return self.predict_batch([image], category, dataset, candidates, defect_type)[0]

    def predict_batch(
        self,
        images: Sequence[str | Path | np.ndarray | Image.Image | torch.Tensor],
        category: str | None = None,
        dataset: str | None = "MVTecAD",
        candidates: list[str] | None = None,
        defect_type: bool = True,
    ) -> list[GenAUPrediction]:
        """Answer several images of one product, in their order (arguments as :meth:`predict`).

        The images resized to the same exported size share every decoder pass: one prefill and
        one decoding step per answer token for all of them (a batch of the decoder graph). The
        vision graphs and the readout still run image by image.

        Raises:
            BrokenImageError, ValueError: An image cannot be read or used (:meth:`prepare`); the
                message names it, and no image of the call is answered.

        """
        pixels = [self.prepare(image) for image in images]
        name = object_name(category) if category else self.manifest["default_object"]
        candidates = candidates or self.candidates(category, dataset)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for index, image_pixels in enumerate(pixels):
            by_size.setdefault(tuple(image_pixels.shape[-2:]), []).append(index)
        predictions: dict[int, GenAUPrediction] = {}
        for indices in by_size.values():
            answered = self._answer([pixels[index] for index in indices], name, candidates, defect_type)
            predictions.update(zip(indices, answered, strict=True))
        return [predictions[index] for index in range(len(pixels))]

    def _answer(
        self, pixels: list[torch.Tensor], name: str, candidates: list[str] | None, defect_type: bool
    ) -> list[GenAUPrediction]:
        """Both questions about images ``(3, H, W)`` of one size, the decoder reading them as one batch.

        The type question is asked when ``defect_type`` and there are ``candidates``; the
        candidates name the binary answer's drafts either way (``DialogueCodec.answer_drafts``).
        """
        size = tuple(pixels[0].shape[-2:])
        asked = candidates if defect_type else None
        questions = [prompts.instruction(name)]
        if asked:
            questions.append(prompts.type_instruction(name, asked))
        image_features, stage_features = zip(*(self.see(image) for image in pixels), strict=True)
        prompt_ids = [self.codec.prompts([question], [len(image_features[0])]).input_ids for question in questions]
        options = self.codec.type_options(asked) if asked and self.type_mode == "likelihood" else []
        drafts = [self.codec.answer_drafts(name, candidates)]
        if asked and not options:  # the type question answered by generation
            drafts.append(self.codec.type_drafts(asked))
        prefill = self._prefill(prompt_ids, list(image_features), self.codec.option_ids(options), drafts)
        decoded = self._greedy(prefill.questions[0])
        log_odds = self.codec.log_odds(decoded.first_logits).numpy()
        anchors = decoded.anchors.numpy()
        defect_types = self._defect_types(prefill, asked, options) if asked else [None] * len(pixels)
        answers = self.codec.texts(decoded.answer_tokens)
        predictions = []
        for index, stages in enumerate(stage_features):
            outputs = self.readouts[size]([stages, anchors[index : index + 1], log_odds[index : index + 1]])
            result = {port.get_any_name(): value for port, value in outputs.items()}
            predictions.append(
                GenAUPrediction(
                    pred_score=float(result["pred_score"].reshape(-1)[0]),
                    pred_label=bool(result["pred_label"].reshape(-1)[0]),
                    anomaly_map=result["anomaly_map"].reshape(size),
                    pred_mask=result["pred_mask"].reshape(size).astype(bool),
                    pred_defect_type=defect_types[index],
                    explanation=answers[index],
                    input_size=size,
                )
            )
        return predictions

    @property
    def type_mode(self) -> str:
        """How the type question is answered: the checkpoint's ``defect_type_mode`` (``"generate"`` if unset)."""
        return self.manifest["configuration"].get("defect_type_mode") or "generate"

    def _defect_types(self, prefill: Prefill, candidates: list[str], options: list[list[str]]) -> list[list[str]]:
        """Each image's types after the type question's prompt (the prefill's last), by :attr:`type_mode`.

        ``"likelihood"``: the option (normal, or one candidate) whose answer text is likeliest, as
        the prefill scored ``options``, with no free generation; ``"generate"``: the greedy answer,
        mapped by the paper's parser.
        """
        if options:
            return [options[int(best)] for best in prefill.option_scores.argmax(axis=1)]
        answers = self.codec.texts(self._greedy(prefill.questions[-1]).answer_tokens)
        return [self.codec.defect_types(answer, candidates).types for answer in answers]

    def ask(
        self,
        vision: Vision,
        question: str,
        max_new_tokens: int | None = None,
        on_tokens: Callable[[list[int]], None] | None = None,
    ) -> str:
        """Answer a free question about an image already seen (:meth:`see`) with the export's decoder.

        Args:
            vision: The image's :meth:`see` pass.
            question: The user's question; the chat template puts the image before it.
            max_new_tokens: Answer budget (default: the export's).
            on_tokens: Called with the ids fed to the decoder at each step, as they are chosen
                (a streaming answer); the last call carries ``[SEG_defect] [SEG_normal]``.

        Raises:
            ValueError: The question, the image and the answer do not fit the decoder's context.

        """
        image_features = vision[0]
        budget = max_new_tokens or self.manifest["max_new_tokens"]
        prompt_ids = self.codec.prompts([question], [len(image_features)]).input_ids
        check_context(prompt_ids.shape[1], budget, self.manifest["max_positions"])
        (decoded,) = self._decode([prompt_ids], [image_features], budget, on_tokens)
        return self.codec.texts(decoded.answer_tokens)[0]

    def see(self, pixels: torch.Tensor) -> Vision:
        """The image processor and the vision graphs, once per image.

        Returns:
            The image features ``(T, D)`` the decoder reads and the readout's stage features
            ``(S, P, N, C)``.

        """
        views = self.processor.image_processor(images=[pixels], return_tensors="pt", do_rescale=False)
        views = views["pixel_values"][0]
        distinct, inverse = distinct_views(views, [len(views)])
        projector_input, stage_features = self.vision_tower([distinct.numpy()]).to_tuple()
        projector_input, stage_features = projector_input[inverse.numpy()], stage_features[:, inverse.numpy()]
        image_features = self.image_features[tuple(pixels.shape[-2:])]([projector_input])[0]
        return image_features, stage_features

    def candidates(self, category: str | None, dataset: str | None) -> list[str] | None:
        """The category's candidate defect types, or ``None``: no category, or the taxonomy lacks it (logged).

        Raises:
            ValueError: ``dataset`` is not one of the taxonomy's datasets.

        """
        if not category or not self.manifest["defect_types"]:
            return None
        if dataset is not None and dataset not in DATASET_KEYS:
            msg = f"Unknown dataset '{dataset}'; the taxonomy has {', '.join(DATASET_KEYS)} (or None)."
            raise ValueError(msg)
        key = DATASET_KEYS[dataset] if dataset else None
        candidates = product_candidates(key, category)
        if not candidates and category not in self.warned_categories:
            logger.warning("The defect taxonomy has no '%s' in %s: its defect type is not asked.", category, dataset)
            self.warned_categories.add(category)
        return candidates

    def _decode(
        self,
        prompt_ids: list[torch.Tensor],
        image_features: list[np.ndarray],
        max_new_tokens: int | None = None,
        on_tokens: Callable[[list[int]], None] | None = None,
    ) -> list[DecodeResult]:
        """Answer each prompt (``(1, L_i)`` ids) about each image (``(T, D)`` features) with the shared greedy loop.

        ``on_tokens`` sees the ids each decoding step feeds (see :meth:`ask`).
        """
        prefill = self._prefill(prompt_ids, image_features)
        return [self._greedy(question, max_new_tokens, on_tokens) for question in prefill.questions]

    def _prefill(
        self,
        prompt_ids: list[torch.Tensor],
        image_features: list[np.ndarray],
        options: Sequence[list[int]] = (),
        drafts: Sequence[Sequence[list[int]]] = (),
    ) -> Prefill:
        """Feed the prompts, the options after the last one and each prompt's drafts, in one decoder pass.

        Each prompt (``(1, L)`` ids) is asked about each of the ``B`` images (``(T, D)`` features
        each, the same ``T``), as one batch of the decoder. The prompts share their beginning (the
        system turn and the image's tokens): it is fed once, then each prompt's own tokens, then
        each option's ids but its last, then the ids of each draft answer of prompt ``i``
        (``drafts[i]``), as a :class:`PromptTree`: every part reads what it continues and not its
        siblings, so each prompt is answered as if prefilled alone, each option is scored as if fed
        after the last prompt alone, and each draft is read as if decoded after its prompt
        (``drafted_decode``).
        """
        self.decoder_request.reset_state()
        self.cache_length = 0
        batch = len(image_features)
        embeds = [np.concatenate([self._embed(ids, features) for features in image_features]) for ids in prompt_ids]
        shared = shared_prefix_length(prompt_ids) if len(prompt_ids) > 1 else 0
        tree = PromptTree()
        root = tree.add(shared)
        branches = [tree.add(ids.shape[1] - shared, root) for ids in prompt_ids]
        answers = [(index, list(draft)) for index, prompt_drafts in enumerate(drafts) for draft in prompt_drafts]
        fed = [option[:-1] for option in options] + [draft for _, draft in answers]
        parents = [branches[-1]] * len(options) + [branches[index] for index, _ in answers]
        continuations = [tree.add(len(ids), parent) for ids, parent in zip(fed, parents, strict=True)]
        parts = [embeds[0][:, :shared], *(prompt_embeds[:, shared:] for prompt_embeds in embeds)]
        tokens = [token for ids in fed for token in ids]
        if tokens:
            parts.append(self.embeddings([np.tile(np.array([tokens], dtype=np.int64), (batch, 1))])[0])
        # logits after each prompt, after every fed option id, after each draft id before [SEG_defect]
        read_counts = [len(option) - 1 for option in options] + [len(draft) - 2 for _, draft in answers]
        sections = [tree.indices(branch)[-1:] for branch in branches]
        sections += [tree.indices(part)[:count] for part, count in zip(continuations, read_counts, strict=True)]
        positions = np.tile(tree.positions(), (batch, 1))
        logits, hidden = self._infer(
            np.concatenate(parts, axis=1), tree.mask(batch), positions, np.concatenate(sections)
        )
        read = logits.split([len(section) for section in sections], dim=1)
        prompt_logits, continued = [part[:, 0] for part in read[: len(branches)]], read[len(branches) :]
        drafted: list[list[Draft]] = [[] for _ in branches]
        for (index, ids), part, part_logits in zip(
            answers, continuations[len(options) :], continued[len(options) :], strict=True
        ):
            drafted[index].append(Draft(ids, part_logits, hidden[:, torch.from_numpy(tree.indices(part))]))
        questions = [
            Question(tree.visible(branch), ids.shape[1], prompt_logits[index], drafted[index])
            for index, (branch, ids) in enumerate(zip(branches, prompt_ids, strict=True))
        ]
        scored = torch.cat([prompt_logits[-1][:, None], *continued[: len(options)]], dim=1)
        return Prefill(questions, option_scores(scored, options))

    def _greedy(
        self,
        question: Question,
        max_new_tokens: int | None = None,
        on_tokens: Callable[[list[int]], None] | None = None,
    ) -> DecodeResult:
        """The greedy answers to a prefilled question: its drafts' where they are, else decoded after the cache."""
        budget = max_new_tokens or self.manifest["max_new_tokens"]
        codec = self.codec
        drafted = drafted_decode(
            question.logits, question.drafts, codec.seg_ids, codec.banned_ids, codec.pad_id, budget
        )
        if drafted is not None:
            return drafted
        batch = question.logits.shape[0]
        step = partial(self._step, question, self.cache_length)
        return greedy_anchor_decode(
            question.logits,
            step if on_tokens is None else partial(reported_step, on_tokens, step),
            torch.ones(batch, question.length, dtype=torch.long),
            torch.full((batch,), question.length - 1),
            self.codec.seg_ids,
            self.codec.banned_ids,
            self.codec.pad_id,
            budget,
        )

    def _step(
        self, question: Question, start: int, ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoding step of ``question``'s answer: feed ``ids (B, K)`` at ``positions (B, K)``.

        ``attention_mask (B, L + A + K)`` is the greedy loop's: the prompt, the ``A`` answer tokens
        fed so far and the ``K`` fed now. The cache holds the whole prefill, the answers decoded
        before this one (from ``start``) and this answer's tokens: the step reads the prompt's
        positions and this answer's tokens only.
        """
        count = ids.shape[1]
        answer = attention_mask[:, question.length :].numpy().astype(bool)
        batch, prefilled = len(answer), len(question.visible)
        past = np.concatenate(
            [
                np.broadcast_to(question.visible, (batch, prefilled)),
                np.zeros((batch, start - prefilled), dtype=bool),
                answer[:, :-count],
            ],
            axis=1,
        )
        fed = self.embeddings([ids.numpy()])[0]
        logits, hidden = self._infer(fed, step_mask(past, answer[:, -count:]), positions.numpy(), np.array([count - 1]))
        return logits[:, -1], hidden

    def _embed(self, input_ids: torch.Tensor, image_features: np.ndarray) -> np.ndarray:
        """``(1, L, D)`` prompt embeddings with the image's features at its image tokens."""
        embeds = self.embeddings([input_ids.numpy()])[0]
        image_positions = input_ids[0].numpy() == self.codec.image_token_id
        if int(image_positions.sum()) != image_features.shape[0]:
            msg = f"The prompt has {int(image_positions.sum())} image tokens for {image_features.shape[0]} features."
            raise ExportError(msg)
        embeds[0, image_positions] = image_features
        return embeds

    def _infer(
        self, embeds: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, logits_positions: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoder pass on the states' cache (``decoder_inputs``): ``logits (B, K, V)``, ``hidden (B, L, D)``."""
        outputs = self.decoder_request.infer(decoder_inputs(embeds, attention_mask, position_ids, logits_positions))
        self.cache_length += embeds.shape[1]
        return torch.from_numpy(outputs["logits"]), torch.from_numpy(outputs["hidden"])


def reported_step(
    on_tokens: Callable[[list[int]], None],
    step: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    ids: torch.Tensor,
    *args: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A decoding ``step``, after showing ``on_tokens`` the ids it feeds (the first image's)."""
    on_tokens(ids[0].tolist())
    return step(ids, *args)


def option_scores(logits: torch.Tensor, options: Sequence[list[int]]) -> np.ndarray:
    """``(B, K)`` summed log-probabilities of each option's ids.

    ``logits``: ``(B, 1 + R, V)``, after the prompt, then after each option's ids but
    its last, option by option (``R`` the sum of their lengths less one).
    """
    log_probs = logits.float().log_softmax(dim=-1)
    scores, row = [], 1
    for option in options:
        rows = [0, *range(row, row + len(option) - 1)]
        ids = torch.tensor(option).expand(len(log_probs), -1)[..., None]
        scores.append(log_probs[:, rows].gather(2, ids).sum(dim=(1, 2)))
        row += len(option) - 1
    return torch.stack(scores, dim=1).numpy() if scores else np.zeros((len(log_probs), 0), dtype=np.float32)


def shared_prefix_length(prompt_ids: list[torch.Tensor]) -> int:
    """Leading tokens that all ``(1, L_i)`` prompts share, leaving each at least one token of its own."""
    shortest = min(ids.shape[1] for ids in prompt_ids)
    first = prompt_ids[0][0, :shortest]
    same = torch.stack([ids[0, :shortest] == first for ids in prompt_ids]).all(dim=0)
    return min(int(same.long().cumprod(dim=0).sum()), shortest - 1)
