"""Free questions answered by the torch model of a GenAU checkpoint (``serve --ckpt``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from anomalib_genau.dialogue import check_context


class CheckpointFollowUp:
    """The checkpoint's torch model answers a question about prepared pixels, in full precision.

    Args:
        ckpt_path: A GenAU Lightning checkpoint.

    """

    def __init__(self, ckpt_path: str | Path) -> None:
        from anomalib_genau.models.genau import GenAU
        from anomalib_genau.models.genau.export import export_configuration

        self.module = GenAU.load_from_checkpoint(ckpt_path, map_location="cpu").eval()
        self.configuration: dict[str, Any] = export_configuration(self.module)

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor, question: str) -> str:
        """The greedy answer to ``question`` about ``pixels`` ``(3, H, W)`` in ``[0, 1]``.

        Raises:
            ValueError: The question, the image and the answer do not fit the decoder's context.

        """
        model = self.module.model
        vision = model.see(pixels[None])
        length = model.prompts(vision, [question]).input_ids.shape[1]
        check_context(length, model.max_new_tokens, model.llava.config.text_config.max_position_embeddings)
        return model.ask(vision, [question]).texts[0]
