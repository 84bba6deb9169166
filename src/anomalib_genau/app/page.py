"""The station's Gradio page and API.

The page inspects one image or many, re-draws the mask and label when the threshold moves
(from the map already computed), answers follow-up questions as they are decoded and offers a
batch's results for download. Its API, for the production line, is two endpoints:
``/inspect`` (image, product, taxonomy, candidates -> the inferencer's fields and the mask PNG)
and ``/ask`` (image, question -> the answer). Every model call shares one concurrency group
whose limit is the station's number of inferencers; the queue's size is bounded.
"""

from __future__ import annotations

import base64
import html
import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from anomalib_genau.choices import DATASETS
from anomalib_genau.taxonomy import DATASET_KEYS, load_taxonomy

from .station import DEFAULT_THRESHOLD, PREVIEW_SIDE, Inspection, Station, UploadError

MODEL = "genau"  # the concurrency group of every event that runs the model
TABLE_HEADERS = ["image", "file", "score", "label", "defect type", "answer", "seconds"]


def parse_candidates(text: str | None) -> list[str] | None:
    """``"hole, cut"`` as ``["hole", "cut"]``; ``None`` when empty (the taxonomy's then)."""
    candidates = [part.strip() for part in (text or "").split(",") if part.strip()]
    return candidates or None


def label_text(anomalous: bool) -> str:
    """The label as the page shows it."""
    return "anomalous" if anomalous else "normal"


def types_text(types: list[str] | None) -> str:
    """The predicted defect types as the page shows them."""
    if types is None:
        return "(not asked: no product with candidate types, or the station serves without the type question)"
    return ", ".join(types) or "none (normal)"


def thumbnail(inspection: Inspection) -> str:
    """An ``<img>`` of the overlay's preview, inlined: the table's cells show HTML, not files."""
    buffer = io.BytesIO()
    inspection.preview.save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(inspection.name)}" width="{PREVIEW_SIDE}">'


def find(inspections: list[Inspection], name: str | None) -> Inspection | None:
    """The inspection of the image the page selected by ``name``, if any."""
    return next((item for item in inspections if item.name == name), None)


class Handlers:
    """What the page's events and the API do, on one station."""

    def __init__(self, station: Station) -> None:
        self.station = station

    def details(self, inspections: list[Inspection], name: str | None, threshold: float) -> tuple:
        """The selected image's overlay, score, label, type, answer and timing under ``threshold``."""
        inspection = find(inspections, name)
        if inspection is None:
            return None, None, "", "", "", ""
        prediction = inspection.prediction
        return (
            inspection.overlay(threshold),
            round(prediction.pred_score, 4),
            label_text(inspection.label(threshold)),
            types_text(prediction.pred_defect_type),
            prediction.explanation,
            f"Inspected in {inspection.seconds:.2f} s at {prediction.input_size[0]}x{prediction.input_size[1]}.",
        )

    def table(self, inspections: list[Inspection], threshold: float) -> list[list[Any]]:
        """The batch table's rows."""
        return [
            [
                thumbnail(item),
                item.name,
                round(item.prediction.pred_score, 4),
                label_text(item.label(threshold)),
                types_text(item.prediction.pred_defect_type),
                item.prediction.explanation,
                round(item.seconds, 2),
            ]
            for item in inspections
        ]

    def inspect_uploads(
        self,
        files: list[str] | None,
        category: str | None,
        dataset: str,
        candidates: str,
        threshold: float,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's way of asking for a progress bar
    ) -> tuple:
        """Inspect every upload (a progress bar), write the batch's results, show the first image."""
        if not files:
            raise gr.Error("Upload one image or more first.")
        inspections, refused = [], []
        for path in progress.tqdm(files, desc="Inspecting"):
            name = Path(path).name
            try:
                inspections.append(
                    self.station.inspect(path, name, category or None, dataset, parse_candidates(candidates))
                )
            except UploadError as error:
                refused.append(f"- {html.escape(str(error))}")
        status = f"{len(inspections)} of {len(files)} image(s) inspected."
        if refused:
            gr.Warning(f"{len(refused)} file(s) refused; see the list under the Inspect button.")
            status += f" {len(refused)} refused:\n" + "\n".join(refused)
        names = [item.name for item in inspections]
        first = names[0] if names else None
        downloads = [str(path) for path in self.station.write_batch(inspections, threshold)] if inspections else None
        return (
            inspections,
            gr.update(choices=names, value=first),
            self.table(inspections, threshold),
            downloads,
            status,
            *self.details(inspections, first, threshold),
        )

    def redraw(self, inspections: list[Inspection], name: str | None, threshold: float) -> tuple:
        """The details and the table under another threshold or image, from the maps already computed."""
        return (*self.details(inspections, name, threshold), self.table(inspections, threshold))

    def ask_selected(
        self, inspections: list[Inspection], name: str | None, question: str, history: list[dict]
    ) -> Iterator[tuple[list[dict], str, str]]:
        """A follow-up question about the selected image, streamed into the chat."""
        inspection = find(inspections, name)
        if inspection is None:
            raise gr.Error("Inspect an image first, then ask about it.")
        history = [*history, {"role": "user", "content": question}, {"role": "assistant", "content": ""}]
        start = time.perf_counter()
        try:
            for text in self.station.ask(inspection.pixels, question):
                history[-1] = {"role": "assistant", "content": text}
                yield history, "", f"Answering ({time.perf_counter() - start:.2f} s)"
        except ValueError as error:
            raise gr.Error(str(error)) from None
        yield history, "", f"Answered in {time.perf_counter() - start:.2f} s."

    def api_inspect(self, image: str | None, category: str, dataset: str, candidates: str) -> tuple[dict, str]:
        """``/inspect``: the inferencer's fields plus ``seconds``, and the predicted mask as a PNG (0/255)."""
        if not image:
            raise gr.Error("Send an image.")
        try:
            inspection = self.station.inspect(
                image, Path(image).name, category or None, dataset or None, parse_candidates(candidates)
            )
        except UploadError as error:
            raise gr.Error(str(error)) from None
        mask_path = self.station.results_root / "api" / f"{uuid.uuid4().hex}_mask.png"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(inspection.mask().astype("uint8") * 255).save(mask_path)
        return {**inspection.prediction.summary(), "seconds": round(inspection.seconds, 3)}, str(mask_path)

    def api_ask(self, image: str | None, question: str) -> Iterator[str]:
        """``/ask``: the answer to a free question about the image, streamed."""
        if not image:
            raise gr.Error("Send an image.")
        try:
            _, pixels = self.station.prepare(image, Path(image).name)
            yield from self.station.ask(pixels, question)
        except ValueError as error:  # UploadError included
            raise gr.Error(str(error)) from None


def build_page(station: Station) -> gr.Blocks:
    """The page and its API on ``station``."""
    products = sorted({product for products in load_taxonomy().values() for product in products})
    concurrency = len(station.inferencers)
    handlers = Handlers(station)
    with gr.Blocks(title="GenAU inspection station", analytics_enabled=False) as page:
        inspections = gr.State([])
        gr.Markdown("# GenAU inspection station\nIs there an anomaly, where is it, what type is it, and why.")
        with gr.Row():
            with gr.Column(scale=1):
                uploads = gr.File(label="Images", file_count="multiple", file_types=["image"], elem_id="uploads")
                category = gr.Dropdown(
                    products,
                    label="Product (a taxonomy category, or free text)",
                    allow_custom_value=True,
                    value=None,
                    elem_id="category",
                )
                dataset = gr.Dropdown(list(DATASETS), value="MVTecAD", label="Taxonomy", elem_id="dataset")
                candidates = gr.Textbox(
                    label="Candidate defect types (comma-separated, editable)", elem_id="candidates"
                )
                run = gr.Button("Inspect", variant="primary", elem_id="inspect")
                status = gr.Markdown(elem_id="status")
            with gr.Column(scale=2):
                selected = gr.Dropdown([], label="Image", elem_id="selected")
                overlay = gr.Image(
                    label="Anomaly map and predicted mask", type="pil", interactive=False, elem_id="overlay"
                )
                threshold = gr.Slider(
                    0.0, 1.0, value=DEFAULT_THRESHOLD, step=0.01, label="Threshold", elem_id="threshold"
                )
                with gr.Row():
                    score = gr.Number(label="Score", elem_id="score")
                    label = gr.Textbox(label="Label", elem_id="label")
                    defect_type = gr.Textbox(label="Defect type", elem_id="defect-type")
                answer = gr.Textbox(label="Answer", elem_id="answer")
                timing = gr.Markdown(elem_id="timing")
        chat = gr.Chatbot(label="Questions about the selected image", elem_id="chat", height=240)
        with gr.Row():
            question = gr.Textbox(label="Ask", placeholder="Describe the defect.", scale=4, elem_id="question")
            ask_button = gr.Button("Ask", scale=1, elem_id="ask")
        ask_timing = gr.Markdown(elem_id="ask-timing")
        batch = gr.Dataframe(
            headers=TABLE_HEADERS,
            datatype=["html", "str", "number", "str", "str", "str", "number"],
            interactive=False,
            label="Batch (click a header to sort)",
            elem_id="batch",
        )
        downloads = gr.File(
            label="Results: predictions.jsonl, predictions.csv, masks.zip", file_count="multiple", elem_id="downloads"
        )
        with gr.Group(visible=False):  # the API's own inputs and outputs
            api_image, api_category, api_dataset = gr.File(), gr.Textbox(), gr.Textbox(value="MVTecAD")
            api_candidates, api_question = gr.Textbox(), gr.Textbox()
            api_fields, api_mask, api_answer = gr.JSON(), gr.File(), gr.Textbox()
            api_inspect_button, api_ask_button = gr.Button(), gr.Button()

        detail_outputs = [overlay, score, label, defect_type, answer, timing]
        page_only = {"api_visibility": "private"}
        for trigger in (category.change, dataset.change):
            trigger(
                lambda product, taxonomy: ", ".join(
                    station.candidates(product, taxonomy if taxonomy in DATASET_KEYS else None)
                ),
                [category, dataset],
                candidates,
                queue=False,
                **page_only,
            )
        run.click(
            handlers.inspect_uploads,
            [uploads, category, dataset, candidates, threshold],
            [inspections, selected, batch, downloads, status, *detail_outputs],
            concurrency_id=MODEL,
            concurrency_limit=concurrency,
            **page_only,
        )
        selected.change(
            handlers.redraw, [inspections, selected, threshold], [*detail_outputs, batch], queue=False, **page_only
        )
        threshold.change(
            handlers.redraw, [inspections, selected, threshold], [*detail_outputs, batch], queue=False, **page_only
        )
        for trigger in (question.submit, ask_button.click):
            trigger(
                handlers.ask_selected,
                [inspections, selected, question, chat],
                [chat, question, ask_timing],
                concurrency_id=MODEL,
                concurrency_limit=concurrency,
                **page_only,
            )
        api_inspect_button.click(
            handlers.api_inspect,
            [api_image, api_category, api_dataset, api_candidates],
            [api_fields, api_mask],
            api_name="inspect",
            concurrency_id=MODEL,
            concurrency_limit=concurrency,
        )
        api_ask_button.click(
            handlers.api_ask,
            [api_image, api_question],
            api_answer,
            api_name="ask",
            concurrency_id=MODEL,
            concurrency_limit=concurrency,
        )
    return page
