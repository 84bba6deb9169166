"""anomalib's image visualizer plus a caption with GenAU's defect type, answer and score."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from anomalib.utils.path import generate_output_filename
from anomalib.visualization import ImageVisualizer
from anomalib.visualization.image.functional import add_text_to_image
from PIL import Image

if TYPE_CHECKING:
    from anomalib.data import ImageBatch, ImageItem
    from anomalib.models import AnomalibModule
    from lightning.pytorch import Trainer

MAX_CAPTION_CHARS = 120


def caption(item: ImageItem) -> str:
    """One line: the predicted defect type, the answer (``explanation``) and the score.

    The answer is put on one line and truncated to ``MAX_CAPTION_CHARS`` characters (a long or
    reasoning answer ends with "…"; the full text is in ``explanation`` and the predictions file).
    """
    text = " ".join(str(item.explanation or "").split())
    if len(text) > MAX_CAPTION_CHARS:
        text = text[: MAX_CAPTION_CHARS - 1] + "…"
    defect_type = getattr(item, "pred_defect_type", None)
    kind = "" if defect_type is None else f"type: {', '.join(defect_type) or 'normal'}"
    score = "" if item.pred_score is None else f"score {float(item.pred_score):.2f}"
    return " | ".join(part for part in (kind, text, score) if part)


class GenAUVisualizer(ImageVisualizer):
    """Draw anomalib's panels (image, ground truth, map, predicted mask) and a caption strip.

    anomalib's ``ImageVisualizer`` has no text field; the strip below the panels shows the
    predicted defect type, the generated answer (anomalib's ``explanation``) and the image score.

    Args:
        caption_height: Height of the caption strip, in pixels.
        **kwargs: Passed to ``ImageVisualizer``.

    """

    def __init__(self, caption_height: int = 28, **kwargs) -> None:
        super().__init__(**kwargs)
        self.caption_height = caption_height

    def with_caption(self, panels: Image.Image, item: ImageItem) -> Image.Image:
        """Stack ``panels`` over a strip holding :func:`caption`."""
        strip = Image.new("RGB", (panels.width, self.caption_height), "black")
        strip = add_text_to_image(strip, caption(item), size=self.caption_height // 2, background=None, position=(8, 6))
        canvas = Image.new("RGB", (panels.width, panels.height + self.caption_height), "black")
        canvas.paste(panels.convert("RGB"), (0, 0))
        canvas.paste(strip, (0, panels.height))
        return canvas

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: AnomalibModule,
        outputs: ImageBatch,
        batch: ImageBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Save one captioned picture per image, where anomalib's visualizer saves its own."""
        del pl_module, outputs, batch_idx, dataloader_idx
        output_dir = Path(self.output_dir) if self.output_dir else Path(trainer.default_root_dir) / "images"
        datamodule = getattr(trainer, "datamodule", None)
        for item in batch:
            panels = self.visualize(item)
            if panels is None:
                continue
            category = getattr(item, "category", None)
            if category:  # several categories in one run: images/<category>/<defect>/<file>
                filename = generate_output_filename(item.image_path or "", output_dir / category)
            else:
                filename = generate_output_filename(
                    input_path=item.image_path or "",
                    output_path=output_dir,
                    dataset_name=getattr(datamodule, "name", None),
                    category=getattr(datamodule, "category", None),
                )
            self.with_caption(panels, item).save(filename)
