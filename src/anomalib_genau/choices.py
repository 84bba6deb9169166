"""The values the commands offer as choices, in a module light enough for ``anomalib-genau --help``.

Pure Python with no imports: the modules that act on these values (data sources, export,
inferencer) import torch and anomalib, which the argument parser must not load.
"""

DATASETS = ("MVTecAD", "MPDD", "Visa", "RealIAD")
"""The anomalib datasets of the cross-dataset protocol, by datamodule name: layouts, sources and taxonomies."""

WEIGHT_FORMATS = ("f32", "fp16", "int8", "int4", "int8_ptq", "int8_ptq_tower")
"""Weight formats of the OpenVINO export: f32, fp16 storage, NNCF INT8 or INT4 weights, NNCF INT8
quantization of the decoder, or of the decoder and the vision tower."""

QUANTIZED_GRAPHS = {"int8_ptq": ("language_model",), "int8_ptq_tower": ("language_model", "vision_tower")}
"""The weight formats that quantize activations, and so need quantization images: the graphs whose
activations each quantizes."""

PRECISIONS = ("f32", "bf16")
"""Inference precisions of the OpenVINO inferencer (the CPU plugin's ``INFERENCE_PRECISION_HINT``)."""

VISUAL_TOKENS = ("anyres", "global", "pooled", "global_pooled")
"""What the decoder reads of an image: every AnyRes view (the paper's), the global view only, or
either with LLaVA-OneVision's 2 x 2 pooling of its video frames. The readout always reads every view."""
