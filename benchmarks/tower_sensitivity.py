"""Which of the vision tower's INT8 quantizers move GenAU's maps: NNCF's accuracy control, with the maps as its metric.

    python benchmarks/tower_sensitivity.py --ckpt-path results/.../model.ckpt \\
        --data datasets/genau_synthetic/source --categories carpet leather tile

Exports the checkpoint (``f32`` as the reference, ``int8_ptq`` for the rest of the pipeline),
quantizes the f32 vision tower graph with every quantizer NNCF places (calibrated on
``--quantization-images`` normal training images of each category), and runs
``nncf.quantize_with_accuracy_control`` on the same graph. Its metric is one minus the mean, over every
``--stride``-th test image of the categories, of the largest pixel difference between the
export's anomaly map with the quantized tower and the f32 export's map; NNCF reverts the
quantizers that cost most until the metric drops by at most ``--max-drop``. Prints the metric
of the float, fully quantized and accuracy-controlled towers, and the operations reverted:
``int8_ptq_tower`` keeps those in floating point
(``anomalib_genau.deploy.quantization.FLOAT_SCOPES``). Nothing is asserted.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import nncf
import numpy as np
import openvino as ov

from anomalib_genau.deploy import GenAUOpenVINOInferencer
from anomalib_genau.deploy.quantization import tower_samples
from anomalib_genau.models.genau import GenAU
from deployment_metrics import checkpoint_arguments, quantization_images, test_images


def main() -> None:
    parser = checkpoint_arguments(__doc__)
    parser.add_argument("--stride", type=int, default=4, help="validate on every N-th test image")
    parser.add_argument("--max-drop", type=float, default=0.005)
    args = parser.parse_args()

    module = GenAU.load_from_checkpoint(args.ckpt_path, map_location="cpu", weights_only=False).eval()
    images = quantization_images(module, args.data, args.categories, args.quantization_images)
    validation = [(c, path) for c in args.categories for path, _ in test_images(args.data, c)[:: args.stride]]
    with tempfile.TemporaryDirectory() as tmp:
        f32 = GenAUOpenVINOInferencer(module.export_openvino(Path(tmp) / "f32", weights="f32"))
        ptq = module.export_openvino(Path(tmp) / "ptq", weights="int8_ptq", quantization_images=images)
        inferencer = GenAUOpenVINOInferencer(ptq)
        references = [f32.predict(path, category=category).anomaly_map for category, path in validation]
        data = list(zip(validation, references, strict=True))

        def map_agreement(tower: ov.CompiledModel, items: list) -> float:
            inferencer.vision_tower = tower
            differences = [
                np.abs(inferencer.predict(path, category=category).anomaly_map - reference).max()
                for (category, path), reference in items
            ]
            return 1.0 - float(np.mean(differences))

        tower = ov.Core().read_model(Path(tmp) / "f32" / "vision_tower.xml")
        calibration = nncf.Dataset(tower_samples(module.model, images))
        options = {"subset_size": len(images), "model_type": nncf.ModelType.TRANSFORMER}
        start = time.perf_counter()
        controlled = nncf.quantize_with_accuracy_control(
            tower,
            calibration,
            nncf.Dataset(data),
            map_agreement,
            max_drop=args.max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            **options,
        )
        seconds = time.perf_counter() - start
        every = nncf.quantize(tower, calibration, **options)
        rows = {"float tower": tower, "every quantizer": every, "accuracy-controlled": controlled}
        print(
            f"{len(validation)} validation images, {len(images)} quantization images; accuracy control {seconds:.0f} s"
        )
        print("| tower | quantized operations | 1 - mean largest map difference |")
        print("|---|---|---|")
        for name, graph in rows.items():
            agreement = map_agreement(ov.Core().compile_model(graph, "CPU", inferencer.config), data)
            print(f"| {name} | {len(quantized_operations(graph))} | {agreement:.4f} |")
    reverted = sorted(quantized_operations(every) - quantized_operations(controlled))
    print("reverted to floating point:", ", ".join(reverted) or "none")


def quantized_operations(graph: ov.Model) -> set[str]:
    """``"name (type)"`` of each operation with an input that comes from a FakeQuantize."""
    return {
        f"{node.get_friendly_name()} ({node.get_type_name()})"
        for node in graph.get_ops()
        if node.get_type_name() != "FakeQuantize"
        and any(value.get_node().get_type_name() == "FakeQuantize" for value in node.input_values())
    }


if __name__ == "__main__":
    main()
