"""OpenVINO deployment of GenAU: export (``export_openvino``) and inference (``GenAUOpenVINOInferencer``).

The inferencer needs neither Lightning nor peft nor anomalib's models; ``export_openvino``,
which traces the torch model, loads on first access.
"""

from typing import Any

from .inferencer import ExportError, GenAUOpenVINOInferencer, GenAUPrediction

__all__ = ["ExportError", "GenAUOpenVINOInferencer", "GenAUPrediction", "export_openvino"]


def __getattr__(name: str) -> Any:
    """``export_openvino`` on first access."""
    if name == "export_openvino":
        from .export import export_openvino

        return export_openvino
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
