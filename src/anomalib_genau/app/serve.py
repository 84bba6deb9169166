"""``anomalib-genau serve``: load and compile the export, then serve the page and API until Ctrl-C."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# before Gradio is imported: no usage reports and no version check over the network
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


class ServeError(RuntimeError):
    """The station cannot start; the message says why in one line."""


@dataclass
class ServeOptions:
    """How the station is served.

    Attributes:
        export: The OpenVINO export folder (or its ``genau.json``).
        host: Interface to bind; anything but localhost must be asked for.
        port: TCP port.
        precision: ``f32`` or ``bf16``.
        properties: OpenVINO properties for every graph.
        ckpt: A torch checkpoint that answers follow-up questions instead of the export.
        auth: ``(user, password)`` pairs; none: no login.
        workers: Inferencers (compiled models), each answering one request at a time.
        max_queue: Requests waiting beyond the running ones; more are refused at once ("queue is full").
        max_upload_mb: Largest upload, in MiB.
        max_megapixels: Largest image, in megapixels.
        defect_type: ``False`` leaves the type question out of every inspection.

    """

    export: Path
    host: str = "127.0.0.1"
    port: int = 7860
    precision: str = "f32"
    properties: dict[str, Any] = field(default_factory=dict)
    ckpt: Path | None = None
    auth: list[tuple[str, str]] = field(default_factory=list)
    workers: int = 1
    max_queue: int = 16
    max_upload_mb: int = 20
    max_megapixels: int = 50
    defect_type: bool = True


def read_auth(pairs: Sequence[str], files: Sequence[Path]) -> list[tuple[str, str]]:
    """``USER:PASSWORD`` pairs given on the command line and in files (one per line, ``#`` comments).

    Raises:
        ServeError: A pair without a user or a password, or an unreadable file.

    """
    lines = list(pairs)
    for path in files:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            msg = f"cannot read the password file {path}: {error.strerror}"
            raise ServeError(msg) from error
        lines += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    credentials = []
    for line in lines:
        user, separator, password = line.partition(":")
        if not separator or not user or not password:
            msg = "--auth and password files take USER:PASSWORD (neither part empty)"
            raise ServeError(msg)
        credentials.append((user, password))
    return credentials


def check_port(host: str, port: int) -> None:
    """Refuse a port another program holds, before minutes of model loading.

    Raises:
        ServeError: The port is in use (or the host cannot be bound).

    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            msg = f"cannot listen on {host}:{port}: {error.strerror or error}"
            raise ServeError(msg) from error


def start(options: ServeOptions) -> tuple[Any, str]:
    """Load and compile everything, then launch the page without blocking; returns the page and its URL.

    Raises:
        ServeError: The port is taken, the credentials are malformed, or the export or the
            checkpoint cannot be loaded (the inferencer's message).

    """
    from anomalib_genau.deploy import ExportError, GenAUOpenVINOInferencer

    from .page import build_page
    from .station import Station, UploadLimits

    check_port(options.host, options.port)
    if options.workers < 1 or options.max_queue < 1:
        msg = "--workers and --max-queue must be at least 1"
        raise ServeError(msg)
    follow_up, expected = None, None
    if options.ckpt is not None:
        from .follow_up import CheckpointFollowUp

        follow_up = CheckpointFollowUp(options.ckpt)
        expected = follow_up.configuration
    try:
        inferencers = [
            GenAUOpenVINOInferencer(
                options.export, precision=options.precision, expected_configuration=expected, config=options.properties
            )
            for _ in range(options.workers)
        ]
    except ExportError as error:
        raise ServeError(str(error)) from None
    except RuntimeError as error:  # OpenVINO refused a property; its last line says which and why
        msg = f"cannot compile with {options.properties}: {str(error).strip().splitlines()[-1]}"
        raise ServeError(msg) from None

    import gradio as gr

    results = Path(tempfile.mkdtemp(prefix="genau-station-"))
    limits = UploadLimits(max_bytes=options.max_upload_mb * 2**20, max_pixels=options.max_megapixels * 10**6)
    upload_area = Path(gr.utils.get_upload_folder())
    station = Station(inferencers, [upload_area], results, limits, follow_up, defect_type=options.defect_type)
    page = build_page(station).queue(max_size=options.max_queue)
    page.launch(
        server_name=options.host,
        server_port=options.port,
        auth=options.auth or None,
        prevent_thread_lock=True,
        share=False,
        quiet=True,
        show_error=True,
        ssr_mode=False,
        allowed_paths=[str(results)],
        max_file_size=limits.max_bytes,
    )
    return page, page.local_url


def serve(options: ServeOptions) -> None:
    """Start the station, say where it listens, and serve until Ctrl-C (then close the server)."""
    page, url = start(options)
    print(f"GenAU inspection station ready: {url}", flush=True)
    page.block_thread()
