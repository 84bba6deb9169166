"""GenAU's pictures: anomalib's panels plus a caption with the answer and the score."""

import torch
from anomalib.data import ImageItem
from torchvision.tv_tensors import Image as TvImage
from torchvision.tv_tensors import Mask

from anomalib_genau.data import GenAUItem
from anomalib_genau.models.genau.visualizer import MAX_CAPTION_CHARS, GenAUVisualizer, caption


def _item(explanation: str) -> ImageItem:
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[10:30, 10:30] = True
    return ImageItem(
        image=TvImage(torch.rand(3, 64, 64)),
        gt_mask=Mask(mask),
        anomaly_map=torch.rand(1, 64, 64),
        pred_mask=Mask(mask),
        pred_score=torch.tensor(0.734),
        explanation=explanation,
    )


def test_caption_joins_type_answer_and_score_and_truncates() -> None:
    assert caption(_item("Yes, tear.")) == "Yes, tear. | score 0.73"
    typed = GenAUItem(**{**vars(_item("Yes, tear.")), "pred_defect_type": ["tear"]})
    assert caption(typed) == "type: tear | Yes, tear. | score 0.73"
    normal = GenAUItem(**{**vars(_item("No, the carpet is normal.")), "pred_defect_type": []})
    assert caption(normal).startswith("type: normal | No, the carpet is normal.")
    long = caption(_item("Ünïcode défaut\n" * 40))
    assert len(long.split(" | ")[0]) == MAX_CAPTION_CHARS
    assert long.split(" | ")[0].endswith("…")
    assert "\n" not in long


def test_captioned_picture_adds_a_strip_below_the_panels() -> None:
    visualizer = GenAUVisualizer(field_size=(64, 64), caption_height=20)
    item = _item("Yes, hole.")
    panels = visualizer.visualize(item)
    picture = visualizer.with_caption(panels, item)
    assert picture.size == (panels.width, panels.height + 20)
    strip = torch.tensor(list(picture.crop((0, panels.height, picture.width, picture.height)).getdata()))
    assert strip.max() > 0  # the text is drawn
