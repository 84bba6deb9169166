"""The inspection station under load: ``/inspect`` latency and throughput for concurrent API clients.

    python benchmarks/station_load.py                          # random tiny export, 1/4/16 clients
    python benchmarks/station_load.py --size qwen2-0.5b --weights int8_ptq --precision bf16 --requests 2
    python benchmarks/station_load.py --export EXPORT --workers 2 --clients 1 4 16 --requests 8

Starts ``anomalib-genau serve`` on 127.0.0.1 (a free port) in its own process, then, for
each client count, that many ``gradio_client`` clients each send ``--requests`` inspect requests
of generated images back to back, and each answer's score is compared with the
inferencer's for that image. Prints, per client count, the median and 95th-percentile
latency a client sees, the throughput over the whole round, and the inferencer's own median time
per image (the floor a request cannot beat). Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from gradio_client import Client, handle_file

from anomalib_genau.backbone import BACKBONE_SIZES, build_random_backbone
from anomalib_genau.choices import PRECISIONS, WEIGHT_FORMATS
from anomalib_genau.data.synthetic import generate_mvtec_dataset
from anomalib_genau.deploy import GenAUOpenVINOInferencer
from anomalib_genau.machine import cpu_description
from deployment import build_module
from inference import matmul_peak
from timing import median_seconds


def free_port() -> int:
    """A port nothing listens on now (the station binds it right after)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def client_round(url: str, expected: dict[Path, float], clients: int, requests: int) -> tuple[list[float], float]:
    """Every client's request latencies (s) and the round's wall time (s); each answer's score is checked."""
    images = sorted(expected)
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    connected = [Client(url, verbose=False) for _ in range(clients)]  # connecting is not timed

    def run(index: int) -> None:
        for request in range(requests):
            image = images[(index * requests + request) % len(images)]
            start_time = time.perf_counter()
            try:
                fields, _ = connected[index].predict(handle_file(image), "carpet", "MVTecAD", "", api_name="/inspect")
                if abs(fields["pred_score"] - expected[image]) > 1e-4:
                    msg = f"{image.name} scored {fields['pred_score']}, the inferencer gives {expected[image]}"
                    raise RuntimeError(msg)
            except Exception as error:  # counted and reported below, the round goes on
                with lock:
                    errors.append(error)
                continue
            with lock:
                latencies.append(time.perf_counter() - start_time)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(clients)]
    start_time = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start_time
    for client in connected:
        client.close()
    if errors:
        msg = f"{len(errors)} of {clients * requests} requests failed, the first: {errors[0]!r}"
        raise RuntimeError(msg)
    return latencies, wall


def serve(export: Path, precision: str, workers: int, max_queue: int) -> subprocess.Popen:
    """``anomalib-genau serve`` in its own process (the clients' threads stay out of its interpreter)."""
    command = [sys.executable, "-m", "anomalib_genau.cli", "serve", str(export), "--port", str(free_port())]
    options = ["--precision", precision, "--workers", str(workers), "--max-queue", str(max_queue)]
    return subprocess.Popen([*command, *options], stdout=subprocess.PIPE, text=True)


def random_export(root: Path, size_name: str, weights: str) -> Path:
    """A random GenAU of ``size_name`` at its image size (the module ``deployment.py`` times), exported."""
    size = BACKBONE_SIZES[size_name]
    module = build_module(build_random_backbone(root / "backbone", size), max_new_tokens=None)
    side = size.image_size
    quantization_images = [(torch.rand(3, side, side), None) for _ in range(4)] if weights == "int8_ptq" else None
    module.export_openvino(root / "export", [(side, side)], weights, quantization_images)
    return root / "export"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, help="an OpenVINO export (default: a random one of --size)")
    parser.add_argument("--size", choices=sorted(BACKBONE_SIZES), default="tiny", help="the random export's size")
    parser.add_argument("--weights", choices=WEIGHT_FORMATS, default="f32", help="the random export's weights")
    parser.add_argument("--precision", choices=PRECISIONS, default="f32", help="serve --precision")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=4, help="requests per client and round")
    parser.add_argument("--workers", type=int, default=1, help="compiled models answering at once (serve --workers)")
    parser.add_argument("--image-size", type=int, default=128, help="side of the generated images")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export = args.export or random_export(root, args.size, args.weights)
        data = generate_mvtec_dataset(
            root / "data", {"carpet": ("color", "hole")}, 1, 4, 2, image_size=args.image_size, seed=3
        )
        images = sorted((data / "carpet" / "test").rglob("*.png"))
        inferencer = GenAUOpenVINOInferencer(export, precision=args.precision)
        expected = {image: inferencer.predict(image, "carpet", "MVTecAD").pred_score for image in images}
        floor = median_seconds(lambda: inferencer.predict(images[0], "carpet", "MVTecAD"), repeats=5)
        server = serve(export, args.precision, args.workers, max(args.clients) * 2)
        url = server.stdout.readline().strip().rpartition(" ")[2]  # "GenAU inspection station ready: URL"
        try:
            print(f"CPU: {cpu_description()}; {torch.get_num_threads()} threads")
            print(f"bf16 matmul peak: {matmul_peak(torch.bfloat16) / 1e12:.2f} TFLOP/s")
            made = f"random {args.size}, {args.weights} weights"
            print(f"export: {made if args.export is None else export}; {args.precision}; workers: {args.workers}")
            print(f"inferencer alone: {floor:.3f} s per image (median of 5)\n")
            print("| clients | requests | p50 latency (s) | p95 latency (s) | throughput (images/s) | p50 / alone |")
            print("|---|---|---|---|---|---|")
            for clients in args.clients:
                latencies, wall = client_round(url, expected, clients, args.requests)
                p50 = statistics.median(latencies)
                p95 = float(np.percentile(latencies, 95))
                print(
                    f"| {clients} | {len(latencies)} | {p50:.3f} | {p95:.3f} | {len(latencies) / wall:.2f} | "
                    f"{p50 / floor:.1f}x |"
                )
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
