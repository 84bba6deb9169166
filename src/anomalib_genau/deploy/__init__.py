"""OpenVINO deployment of GenAU: export (``export_openvino``) and inference (``GenAUOpenVINOInferencer``)."""

from .export import export_openvino
from .inferencer import ExportError, GenAUOpenVINOInferencer, GenAUPrediction

__all__ = ["ExportError", "GenAUOpenVINOInferencer", "GenAUPrediction", "export_openvino"]
