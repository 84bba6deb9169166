"""GenAU's side of ``anomalib export``: the module's configuration, size and options onto ``deploy.export``.

``anomalib_genau.deploy.export.export_openvino`` takes the torch model, the post-processor and
the configuration; this module reads them off the Lightning module and maps anomalib's export
options (compression type, datamodule) onto GenAU's weight formats and quantization images.
``deploy.export`` loads on first use: training never imports OpenVINO's conversion stack.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from anomalib.data import AnomalibDataModule
from anomalib.deploy import CompressionType

from . import checkpoint

if TYPE_CHECKING:
    from .lightning_model import GenAU

logger = logging.getLogger(__name__)

# Validation images that calibrate NNCF's INT8_PTQ quantization: each is a full prefill (~1500
# tokens at 384 px), so a few images give NNCF's activation ranges thousands of tokens.
QUANTIZATION_IMAGES = 16
# anomalib export options GenAU reads elsewhere or that only INT8_ACQ uses
HANDLED_OPTIONS = {"max_drop", "metric"}


def export_configuration(module: GenAU) -> dict[str, Any]:
    """What an OpenVINO export of the module must agree on with a checkpoint."""
    return {
        "backbone": str(module.hparams.backbone),
        **checkpoint.architecture(module.hparams),
        "defect_type_mode": module.defect_type_mode,
    }


def input_size(module: GenAU) -> tuple[int, int]:
    """The pre-processor's resize target (the size GenAU trains and tests at), else the tile size."""
    size = getattr(getattr(module.pre_processor, "transform", None), "size", None)
    if isinstance(size, Sequence) and len(size) == 2:
        return int(size[0]), int(size[1])
    return (module.model.tile_size,) * 2


def export_module(
    module: GenAU,
    export_root: Path | str,
    image_sizes: Sequence[Sequence[int]] | None = None,
    weights: str = "f32",
    quantization_images: Iterable[tuple[torch.Tensor, str | None]] | None = None,
) -> Path:
    """``deploy.export.export_openvino`` on the module's torch model; sizes default to :func:`input_size`."""
    from anomalib_genau.deploy.export import export_openvino

    sizes = image_sizes or [input_size(module)]
    configuration = export_configuration(module)
    return export_openvino(
        module.model, module.post_processor, configuration, export_root, sizes, weights, quantization_images
    )


def anomalib_export(
    module: GenAU,
    export_root: Path | str,
    size: tuple[int, int] | None,
    compression_type: CompressionType | None,
    datamodule: AnomalibDataModule | None,
    options: Mapping[str, Any],
) -> Path:
    """Export as ``anomalib export --export_type openvino`` asks, into ``export_root/weights/openvino/``.

    ``compression_type`` maps to a weight format (``deploy.export.export_weights``); ``INT8_PTQ``
    quantizes on the first ``QUANTIZATION_IMAGES`` validation images of ``datamodule``, as
    anomalib's own export does; anomalib's other options are logged as ignored.

    Raises:
        ValueError: An unsupported compression, or ``INT8_PTQ`` without a datamodule.

    """
    from anomalib_genau.deploy.export import export_weights, quantization_images

    unused = {key for key, value in options.items() if value is not None and key not in HANDLED_OPTIONS}
    if unused:
        logger.warning("GenAU's OpenVINO export ignores %s.", ", ".join(sorted(unused)))
    weights = export_weights(compression_type)
    images = None
    if weights == "int8_ptq":
        if datamodule is None:
            msg = "GenAU's INT8_PTQ export needs a datamodule: its validation images calibrate the quantization."
            raise ValueError(msg)
        datamodule.setup("fit")
        images = quantization_images(datamodule.val_dataloader(), module.pre_processed, QUANTIZATION_IMAGES)
    root = Path(export_root) / "weights" / "openvino"
    return export_module(module, root, [size] if size else None, weights, images)
