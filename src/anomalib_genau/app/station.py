"""The inspection station's work, without its page.

Uploads are checked, images inspected, the threshold re-applied to a computed map, free
questions answered as a stream and batch results written.

:mod:`anomalib_genau.app.page` puts a Gradio page and API on a :class:`Station`; this module
imports no Gradio, so its behaviour is tested without a server.
"""

from __future__ import annotations

import csv
import json
import queue
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from anomalib.visualization.image.functional import overlay_images, visualize_anomaly_map, visualize_mask
from PIL import Image

from anomalib_genau.data.images import BrokenImageError
from anomalib_genau.deploy import GenAUOpenVINOInferencer, GenAUPrediction
from anomalib_genau.dialogue import DialogueCodec

# anomalib's PostProcessor normalises scores and maps so that the threshold is 0.5 and labels ``value > 0.5``
DEFAULT_THRESHOLD = 0.5
# ``predictions.jsonl``'s fields (``anomalib predict``'s PredictionWriter), then the station's own
RECORD_FIELDS = ("image_path", "pred_score", "pred_label", "pred_defect_type", "explanation", "mask_path")
PREVIEW_SIDE = 64  # pixels, the longer side of an inspection's preview


class UploadError(ValueError):
    """An upload is outside the upload area, too large, or not an image."""


@dataclass(frozen=True)
class UploadLimits:
    """What the station accepts: file bytes and decoded pixels (a 4000 x 4000 image is 16 MP)."""

    max_bytes: int = 20 * 2**20
    max_pixels: int = 50_000_000


class FollowUpModel(Protocol):
    """Answers a free question about prepared pixels ``(3, H, W)`` in ``[0, 1]`` (the torch checkpoint)."""

    def __call__(self, pixels: torch.Tensor, question: str) -> str:
        """The answer to ``question`` about ``pixels``."""


@dataclass
class Inspection:
    """One inspected upload: its prepared pixels, the export's answer and how long it took.

    Attributes:
        path: The uploaded file.
        name: The name the user gave the file.
        pixels: ``(3, H, W)`` the image resized to the exported size, in ``[0, 1]``.
        prediction: The export's answer (map ``(H, W)`` post-processed, threshold 0.5).
        seconds: Wall time of the inspection.

    """

    path: Path
    name: str
    pixels: torch.Tensor
    prediction: GenAUPrediction
    seconds: float

    def mask(self, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
        """``(H, W)`` bool: the map above ``threshold`` (the export's mask at 0.5)."""
        return self.prediction.anomaly_map > threshold

    def label(self, threshold: float = DEFAULT_THRESHOLD) -> bool:
        """Anomalous when the score is above ``threshold`` (the export's label at 0.5)."""
        return self.prediction.pred_score > threshold

    def overlay(self, threshold: float = DEFAULT_THRESHOLD) -> Image.Image:
        """The image with its anomaly map in colour and the mask's outline, as anomalib's visualizer draws them."""
        image = Image.fromarray((self.pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        heat = visualize_anomaly_map(torch.from_numpy(self.prediction.anomaly_map))
        outline = visualize_mask(torch.from_numpy(self.mask(threshold)), mode="contour", color=(255, 0, 0), alpha=1.0)
        return overlay_images(image, [heat, outline], alpha=[0.4, 1.0]).convert("RGB")

    @cached_property
    def preview(self) -> Image.Image:
        """:meth:`overlay` at the export's threshold, at most ``PREVIEW_SIDE`` pixels a side; drawn once."""
        image = self.overlay()
        image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
        return image

    def record(self, threshold: float = DEFAULT_THRESHOLD, mask_path: str | None = None) -> dict[str, Any]:
        """The ``predictions.jsonl`` record, under ``threshold``, plus the station's ``seconds``."""
        return {
            "image_path": self.name,
            "pred_score": round(self.prediction.pred_score, 6),
            "pred_label": int(self.label(threshold)),
            "pred_defect_type": self.prediction.pred_defect_type,
            "explanation": self.prediction.explanation,
            "mask_path": mask_path,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Station:
    """GenAU's OpenVINO export serving uploads: one inference at a time per compiled model.

    Args:
        inferencers: One or more inferencers of the same export; each serves one request at a
            time (its decoder holds a KV cache), so their count is the station's concurrency.
        upload_roots: Folders uploads may come from; any other path is refused.
        results_root: Where batch results are written.
        limits: Upload size and pixel limits.
        follow_up: Answers free questions instead of the export (a torch checkpoint), if given.
        defect_type: ``False`` leaves the type question out of every inspection (the inferencer's
            ``defect_type``): the same label, score, map and answer, sooner.

    """

    inferencers: list[GenAUOpenVINOInferencer]
    upload_roots: list[Path]
    results_root: Path
    limits: UploadLimits = field(default_factory=UploadLimits)
    follow_up: FollowUpModel | None = None
    defect_type: bool = True

    def __post_init__(self) -> None:
        self._idle: queue.Queue[GenAUOpenVINOInferencer] = queue.Queue()
        for inferencer in self.inferencers:
            self._idle.put(inferencer)
        self._batches = 0
        self._lock = threading.Lock()

    @contextmanager
    def _inferencer(self) -> Iterator[GenAUOpenVINOInferencer]:
        inferencer = self._idle.get()
        try:
            yield inferencer
        finally:
            self._idle.put(inferencer)

    def check_upload(self, path: str | Path) -> Path:
        """The upload's resolved path, if it lies in the upload area, fits the limits and is an image.

        Raises:
            UploadError: Why the upload is refused, naming the file.

        """
        resolved = Path(path).resolve()
        name = Path(path).name
        if not any(resolved.is_relative_to(root.resolve()) for root in self.upload_roots):
            msg = f"{name} is not an upload: files are read from the upload area only."
            raise UploadError(msg)
        if not resolved.is_file():
            msg = f"{name} is not a file."
            raise UploadError(msg)
        size = resolved.stat().st_size
        if size > self.limits.max_bytes:
            msg = f"{name} is {size / 2**20:.1f} MiB; uploads are limited to {self.limits.max_bytes / 2**20:.0f} MiB."
            raise UploadError(msg)
        try:
            with Image.open(resolved) as image:
                width, height = image.size
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            reason = str(error).replace(f"'{resolved}'", name).replace(str(resolved), name)  # no server paths
            msg = f"{name} is not an image this station reads: {reason}"
            raise UploadError(msg) from error
        if width * height > self.limits.max_pixels:
            msg = (
                f"{name} is {width} x {height} pixels; the station takes images of up to "
                f"{self.limits.max_pixels / 1e6:.0f} MP."
            )
            raise UploadError(msg)
        return resolved

    def inspect(
        self,
        path: str | Path,
        name: str | None = None,
        category: str | None = None,
        dataset: str | None = "MVTecAD",
        candidates: list[str] | None = None,
    ) -> Inspection:
        """Check an upload and answer it: score, map, mask, label, defect type and answer.

        Raises:
            UploadError: The upload is refused, or the inferencer cannot read it (too small, broken).

        """
        start = time.perf_counter()
        resolved, pixels = self.prepare(path, name)
        with self._inferencer() as inferencer:
            prediction = inferencer.predict(
                pixels, category, dataset, candidates=candidates, defect_type=self.defect_type
            )
        return Inspection(resolved, name or resolved.name, pixels, prediction, time.perf_counter() - start)

    def prepare(self, path: str | Path, name: str | None = None) -> tuple[Path, torch.Tensor]:
        """The checked upload and its pixels ``(3, H, W)``, resized to the nearest exported size.

        Raises:
            UploadError: The upload is refused, or the inferencer cannot read it (too small, broken).

        """
        resolved = self.check_upload(path)
        try:
            return resolved, self.inferencers[0].prepare(resolved)
        except (BrokenImageError, ValueError) as error:
            raise UploadError(str(error).replace(str(resolved), name or resolved.name)) from error

    def ask(self, pixels: torch.Tensor, question: str) -> Iterator[str]:
        """Answer a free question about prepared pixels; yields the answer so far as it is decoded.

        The export's decoder answers, token by token; with a ``follow_up`` model (a torch
        checkpoint), that model answers in one piece.

        Raises:
            ValueError: An empty question, or one longer than the model's context.

        """
        question = question.strip()
        if not question:
            msg = "Ask a question about the image."
            raise ValueError(msg)
        if self.follow_up is not None:
            yield self.follow_up(pixels, question)
            return

        def answer(on_tokens: Callable[[list[int]], None]) -> str:
            # the decoding thread holds the inferencer: a client that leaves mid-answer cannot free it early
            with self._inferencer() as inferencer:
                return inferencer.ask(inferencer.see(pixels), question, None, on_tokens)

        yield from _streamed(answer, self.inferencers[0].codec)

    def candidates(self, category: str | None, dataset: str | None) -> list[str]:
        """The taxonomy's candidate types of a product, or ``[]`` (free text, or a product it lacks)."""
        return self.inferencers[0].candidates(category, dataset) or []

    def write_batch(self, inspections: list[Inspection], threshold: float = DEFAULT_THRESHOLD) -> list[Path]:
        """``predictions.jsonl``, ``predictions.csv`` and ``masks.zip`` (PNG, 0/255) of a batch, in a new folder."""
        with self._lock:
            self._batches += 1
            folder = self.results_root / f"batch_{self._batches:04d}"
        masks = folder / "masks"
        masks.mkdir(parents=True)
        records = []
        for index, inspection in enumerate(inspections):
            mask_name = f"{index:04d}_{Path(inspection.name).stem}.png"
            Image.fromarray(inspection.mask(threshold).astype(np.uint8) * 255).save(masks / mask_name)
            records.append(inspection.record(threshold, f"masks/{mask_name}"))
        jsonl = folder / "predictions.jsonl"
        jsonl.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
        table = folder / "predictions.csv"
        with table.open("w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=[*RECORD_FIELDS, "seconds"])
            writer.writeheader()
            for record in records:
                types = record["pred_defect_type"]
                writer.writerow({**record, "pred_defect_type": "" if types is None else ";".join(types)})
        archive = folder / "masks.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            for mask in sorted(masks.iterdir()):
                zipped.write(mask, f"masks/{mask.name}")
        return [jsonl, table, archive]


def _streamed(answer: Callable[[Callable[[list[int]], None]], str], codec: DialogueCodec) -> Iterator[str]:
    """Run ``answer(on_tokens)`` in a thread and yield the decoded text after each step, then the final answer."""
    steps: queue.Queue[list[int] | None] = queue.Queue()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["text"] = answer(steps.put)
        except Exception as error:  # re-raised in the caller's thread below
            outcome["error"] = error
        finally:
            steps.put(None)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    seg_defect = codec.seg_ids.defect
    tokens: list[int] = []
    while (ids := steps.get()) is not None:
        tokens += ids
        if seg_defect not in tokens:
            yield codec.texts([tokens])[0]
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    yield outcome["text"]
