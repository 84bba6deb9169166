"""The inspection station (``anomalib-genau serve``): its work, its HTTP API, its command and its page in Chromium."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.client import Job
from PIL import Image

if TYPE_CHECKING:
    from playwright.sync_api import Page

from anomalib_genau.app.serve import ServeOptions, start
from anomalib_genau.app.station import RECORD_FIELDS, Station, UploadError, UploadLimits
from anomalib_genau.data.synthetic import generate_mvtec_dataset
from anomalib_genau.deploy import GenAUOpenVINOInferencer, export_openvino
from anomalib_genau.models.genau import GenAU
from anomalib_genau.models.genau.export import export_configuration

SIZE = (112, 112)
QUESTION = "Describe the defect."
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def station_export(
    tiny_backbone: Path, as_trained: Callable[..., GenAU], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A random tiny export with a trained model's post-processing; ``GENAU_STATION_EXPORT`` names another.

    The README's picture of the station comes from the page test run on the demo checkpoint's
    export (``GENAU_STATION_EXPORT=... GENAU_SCREENSHOTS=docs/images``).
    """
    if os.environ.get("GENAU_STATION_EXPORT"):
        return Path(os.environ["GENAU_STATION_EXPORT"])
    module = as_trained(tiny_backbone)
    root = tmp_path_factory.mktemp("station") / "export"
    return export_openvino(module.model, module.post_processor, export_configuration(module), root, [SIZE]).parent


@pytest.fixture(scope="module")
def inferencer(station_export: Path) -> GenAUOpenVINOInferencer:
    return GenAUOpenVINOInferencer(station_export)


@pytest.fixture(scope="module")
def upload_area(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated carpet images (a defect first, then a normal one), as uploads."""
    root = generate_mvtec_dataset(
        tmp_path_factory.mktemp("uploads"), seed=7, n_train=1, n_test_good=6, n_test_per_defect=2, image_size=128
    )
    area = tmp_path_factory.mktemp("area")
    test = root / "carpet" / "test"
    images = [test / "hole" / "000.png", test / "good" / "000.png", *sorted(test.rglob("*.png"))]
    for index, path in enumerate(images[:12]):
        shutil.copy(path, area / f"{index:02d}_{path.parent.name}.png")
    return area


def uploads(area: Path) -> list[Path]:
    return sorted(area.glob("*_*.png"))


@pytest.fixture(scope="module")
def station(
    inferencer: GenAUOpenVINOInferencer, upload_area: Path, tmp_path_factory: pytest.TempPathFactory
) -> Station:
    return Station([inferencer], [upload_area], tmp_path_factory.mktemp("results"))


def test_an_inspection_is_the_inferencers_answer_and_the_threshold_redraws_its_map(
    station: Station, inferencer: GenAUOpenVINOInferencer, upload_area: Path
) -> None:
    path = uploads(upload_area)[0]
    inspection = station.inspect(path, path.name, "carpet")
    expected = inferencer.predict(path, category="carpet")
    assert inspection.prediction.summary() == expected.summary()
    assert inspection.prediction.pred_defect_type is not None  # carpet's types were asked
    np.testing.assert_array_equal(inspection.mask(), expected.pred_mask)
    assert inspection.label() == expected.pred_label
    # another threshold re-draws from the same map: the mask shrinks as the threshold rises
    anomaly_map = expected.anomaly_map
    low, high = np.quantile(anomaly_map, 0.2), np.quantile(anomaly_map, 0.8)
    np.testing.assert_array_equal(inspection.mask(low), anomaly_map > low)
    assert inspection.mask(low).sum() > inspection.mask(high).sum() > 0
    assert inspection.label(expected.pred_score - 1e-3) and not inspection.label(expected.pred_score + 1e-3)
    # edited candidates replace the taxonomy's
    edited = station.inspect(path, path.name, "carpet", candidates=["scratch", "stain"])
    assert set(edited.prediction.pred_defect_type) <= {"scratch", "stain"}
    # a station serving without the type question (serve --no-defect-type): the same answer, no type
    untyped = replace(station, defect_type=False).inspect(path, path.name, "carpet")
    assert untyped.prediction.pred_defect_type is None
    assert untyped.prediction.explanation == expected.explanation
    assert untyped.prediction.pred_score == pytest.approx(expected.pred_score, abs=1e-6)
    overlay = np.asarray(inspection.overlay(high))
    assert overlay.shape == (*SIZE, 3)
    outline = overlay[..., 0].astype(int) - overlay[..., 1:].mean(axis=-1)
    assert outline.max() > 100  # the red outline of the mask is drawn


def test_a_question_streams_its_answer_and_a_long_one_is_refused(
    station: Station, inferencer: GenAUOpenVINOInferencer, upload_area: Path
) -> None:
    path = uploads(upload_area)[0]
    _, pixels = station.prepare(path)
    chunks = list(station.ask(pixels, QUESTION))
    expected = inferencer.ask(inferencer.see(pixels), QUESTION)
    assert chunks[-1] == expected and expected
    assert len(chunks) > 2  # streamed: several partial answers before the last
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(chunks[:-1]))
    context = inferencer.manifest["max_positions"]
    with pytest.raises(ValueError, match=f"too long.*context holds {context}"):
        list(station.ask(pixels, "why " * context))
    with pytest.raises(ValueError, match="Ask a question"):
        list(station.ask(pixels, "   "))


def test_uploads_are_checked_before_the_model_sees_them(
    station: Station, upload_area: Path, tmp_path: Path, inferencer: GenAUOpenVINOInferencer
) -> None:
    broken = upload_area / "notes.png"
    broken.write_text("not an image")
    with pytest.raises(UploadError, match=r"notes\.png is not an image") as error:
        station.inspect(broken)
    assert str(upload_area) not in str(error.value)  # no server paths in messages
    outside = tmp_path / "elsewhere.png"
    shutil.copy(uploads(upload_area)[0], outside)
    with pytest.raises(UploadError, match="upload area only"):
        station.inspect(outside)
    with pytest.raises(UploadError, match="upload area only"):
        station.inspect(upload_area / ".." / outside.parent.name / outside.name)
    tiny = upload_area / "tiny.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tiny)
    with pytest.raises(UploadError, match="smaller than one"):
        station.inspect(tiny)
    strict = Station([inferencer], [upload_area], tmp_path, UploadLimits(max_bytes=1000, max_pixels=10_000))
    with pytest.raises(UploadError, match="limited to"):
        strict.inspect(uploads(upload_area)[0])
    huge = upload_area / "huge.png"
    Image.fromarray(np.zeros((128, 128), np.uint8)).save(huge)  # 16384 pixels, 200 bytes
    with pytest.raises(UploadError, match="128 x 128 pixels"):
        strict.inspect(huge)
    deep = upload_area / "deep.png"  # a 16-bit grayscale camera image is answered
    Image.fromarray((np.arange(128 * 128).reshape(128, 128) * 3).astype(np.uint16)).save(deep)
    assert 0 <= station.inspect(deep).prediction.pred_score <= 1
    for path in (broken, tiny, huge, deep):
        path.unlink()


def test_a_batch_is_written_with_anomalib_predicts_schema(station: Station, upload_area: Path) -> None:
    inspections = [station.inspect(path, path.name) for path in uploads(upload_area)[:3]]
    jsonl, table, archive = station.write_batch(inspections, threshold=0.5)
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [list(record) for record in records] == [[*RECORD_FIELDS, "seconds"]] * 3
    assert [record["pred_label"] for record in records] == [int(item.prediction.pred_label) for item in inspections]
    assert table.read_text().splitlines()[0] == ",".join([*RECORD_FIELDS, "seconds"])
    with zipfile.ZipFile(archive) as zipped:
        names = zipped.namelist()
        assert names == sorted(record["mask_path"] for record in records)
        mask = np.asarray(Image.open(zipped.open(names[0])))
    np.testing.assert_array_equal(mask > 0, inspections[0].prediction.pred_mask)


@pytest.fixture(scope="module")
def server(station_export: Path) -> Iterator[str]:
    """The station on a free localhost port, at most one inference at a time and 40 waiting."""
    page, url = start(ServeOptions(station_export, port=free_port(), max_queue=40))
    yield url
    page.close()


def test_the_api_answers_inspect_and_ask_as_the_inferencer(
    server: str, inferencer: GenAUOpenVINOInferencer, upload_area: Path
) -> None:
    client = Client(server, verbose=False)
    assert {"/inspect", "/ask"} <= set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    path = uploads(upload_area)[0]
    fields, mask_file = client.predict(handle_file(path), "carpet", "MVTecAD", "", api_name="/inspect")
    expected = inferencer.predict(path, category="carpet")
    assert {key: value for key, value in fields.items() if key != "seconds"} == json.loads(
        json.dumps(expected.summary())
    )
    np.testing.assert_array_equal(np.asarray(Image.open(mask_file)) > 0, expected.pred_mask)
    answer = client.predict(handle_file(path), QUESTION, api_name="/ask")
    assert answer == inferencer.ask(inferencer.see(inferencer.prepare(path)), QUESTION)


def test_concurrent_requests_are_each_answered_once_with_the_inferencers_fields(
    server: str, inferencer: GenAUOpenVINOInferencer, upload_area: Path
) -> None:
    """32 inspect requests at once, on four images: every one answered, once, as the inferencer answers."""
    images = uploads(upload_area)[:4]
    expected = {path.name: json.loads(json.dumps(inferencer.predict(path).summary())) for path in images}
    client = Client(server, verbose=False)
    jobs = [
        (images[i % 4].name, client.submit(handle_file(images[i % 4]), "", "", "", api_name="/inspect"))
        for i in range(32)
    ]
    for name, job in jobs:
        fields, _ = job.result(timeout=120)
        assert {key: value for key, value in fields.items() if key != "seconds"} == expected[name]
        assert len(job.outputs()) == 1  # answered once


def outcome(job: Job) -> str:
    """``answered``, ``busy`` (the queue was full) or the error's text."""
    try:
        return "answered" if job.result(timeout=60) else "empty"
    except Exception as error:  # gradio_client raises QueueError and others; each is reported
        return "busy" if "Queue is full" in str(error) else str(error)


def test_a_full_queue_refuses_at_once_and_nothing_outside_the_upload_area_is_served(
    station_export: Path, upload_area: Path
) -> None:
    page, url = start(ServeOptions(station_export, port=free_port(), max_queue=1))
    try:
        client = Client(url, verbose=False)
        image = handle_file(uploads(upload_area)[0])
        jobs = [client.submit(image, QUESTION, api_name="/ask") for _ in range(8)]
        outcomes = [outcome(job) for job in jobs]
        assert "busy" in outcomes and "answered" in outcomes
        assert set(outcomes) <= {"answered", "busy"}
        for leak in ("/etc/passwd", str(station_export / "genau.json"), "../../../../etc/passwd"):
            response = httpx.get(f"{url}gradio_api/file={leak}")
            assert response.status_code in {403, 404}, leak
            assert "root:" not in response.text and "config_id" not in response.text
        # an API call naming a server file instead of uploading one is refused
        file_data = {"path": str(station_export / "genau.json"), "meta": {"_type": "gradio.FileData"}}
        event = httpx.post(f"{url}gradio_api/call/inspect", json={"data": [file_data, "", "", ""]}).json()["event_id"]
        stream = httpx.get(f"{url}gradio_api/call/inspect/{event}", timeout=30).text
        assert "event: error" in stream and "config_id" not in stream
    finally:
        page.close()


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "anomalib_genau.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def test_serve_starts_ready_asks_for_a_login_refuses_a_taken_port_and_stops_on_ctrl_c(
    station_export: Path, tmp_path: Path
) -> None:
    port = free_port()
    passwords = tmp_path / "passwords"
    passwords.write_text("# inspectors\nalice:wonder\n")
    command = [sys.executable, "-m", "anomalib_genau.cli", "serve", str(station_export), "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--auth-file", str(passwords)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        ready = process.stdout.readline()
        assert ready.strip() == f"GenAU inspection station ready: http://127.0.0.1:{port}/", ready
        assert httpx.get(f"http://127.0.0.1:{port}/gradio_api/info").status_code == 401
        client = Client(f"http://127.0.0.1:{port}/", auth=("alice", "wonder"), verbose=False)
        assert "/inspect" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        client.close()  # its heartbeat stream would hold the server's graceful shutdown open
        taken = run_cli("serve", str(station_export), "--port", str(port))
        assert taken.returncode != 0
        assert f"anomalib-genau serve: cannot listen on 127.0.0.1:{port}" in taken.stderr
        assert len(taken.stderr.strip().splitlines()) == 1
    finally:
        process.send_signal(signal.SIGINT)
        # a bound against a hang, not a speed check: one suite run on 2 busy cores took over 30 s
        process.wait(timeout=90)
    assert process.returncode == 0
    missing = run_cli("serve", str(tmp_path / "no-export"), "--port", str(free_port()))
    assert missing.returncode != 0 and "No GenAU export at" in missing.stderr
    malformed = run_cli("serve", str(station_export), "--auth", "alice")
    assert "USER:PASSWORD" in malformed.stderr


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="needs Debian's chromium (README)")
def test_the_page_in_chromium(
    server: str, inferencer: GenAUOpenVINOInferencer, upload_area: Path, tmp_path: Path
) -> None:
    """Inspect a defect and a normal image, move the threshold, ask, survive a broken file, run a batch of 10."""
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM is not None, "CI installs Debian's chromium (apt-get install -y chromium)"
    defect, normal = uploads(upload_area)[:2]
    expected = inferencer.predict(defect, category="carpet")
    screenshots = Path(os.environ.get("GENAU_SCREENSHOTS", tmp_path))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.goto(server)
        page.locator("#category input").fill("carpet")
        page.locator("#category input").press("Enter")
        expect(page.locator("#candidates textarea")).not_to_have_value("", timeout=10_000)
        page.locator("#uploads input[type=file]").set_input_files([str(defect), str(normal)])
        page.locator("#inspect").click()
        expect(page.locator("#status")).to_contain_text("2 of 2 image(s) inspected", timeout=60_000)
        assert float(page.locator("#score input").input_value()) == pytest.approx(expected.pred_score, abs=1e-4)
        expect(page.locator("#label textarea")).to_have_value("anomalous" if expected.pred_label else "normal")
        expect(page.locator("#defect-type textarea")).to_have_value(
            ", ".join(expected.pred_defect_type) or "none (normal)"
        )
        expect(page.locator("#answer textarea")).to_have_value(expected.explanation)
        expect(page.locator("#overlay img")).to_be_visible()
        # drawn, not only placed: the screenshot needs the picture loaded
        page.wait_for_function("() => document.querySelector('#overlay img')?.naturalWidth > 0")
        page.screenshot(path=str(screenshots / "station.png"), full_page=True)
        move_threshold(page, expected.pred_score)
        # a follow-up question streams its answer into the chat
        page.locator("#question textarea").fill(QUESTION)
        page.locator("#question textarea").press("Enter")
        answer = inferencer.ask(inferencer.see(inferencer.prepare(defect)), QUESTION)
        expect(page.locator("#chat")).to_contain_text(answer[:20], timeout=60_000)
        expect(page.locator("#ask-timing")).to_contain_text("Answered in", timeout=60_000)
        # a text file named .png is refused on the page, which keeps working
        broken = tmp_path / "broken.png"
        broken.write_text("not an image")
        upload(page, [broken, normal])
        page.locator("#inspect").click()
        expect(page.locator("#status")).to_contain_text("1 of 2 image(s) inspected. 1 refused", timeout=60_000)
        expect(page.locator("#status")).to_contain_text("broken.png is not an image")
        run_batch(page, uploads(upload_area)[:10])
        browser.close()


def upload(page: Page, files: list[Path]) -> None:
    """Replace the uploads (the file box adds to what it holds)."""
    page.locator("#uploads button[aria-label=Clear]").click()
    page.locator("#uploads input[type=file]").set_input_files([str(path) for path in files])


def move_threshold(page: Page, score: float) -> None:
    """The label follows the threshold, re-drawn from the computed score."""
    from playwright.sync_api import expect

    threshold = page.locator("#threshold input[type=number]")
    threshold.fill(f"{min(score + 0.01, 1.0):.2f}")
    threshold.press("Enter")
    expect(page.locator("#label textarea")).to_have_value("normal", timeout=10_000)
    threshold.fill(f"{max(score - 0.01, 0.0):.2f}")
    threshold.press("Enter")
    expect(page.locator("#label textarea")).to_have_value("anomalous", timeout=10_000)


def run_batch(page: Page, batch: list[Path]) -> None:
    """A batch's table and its downloads."""
    from playwright.sync_api import expect

    upload(page, batch)
    page.locator("#inspect").click()
    expect(page.locator("#status")).to_contain_text("10 of 10 image(s) inspected", timeout=120_000)
    # the table is virtualised: its grid counts the header and all 10 rows, rendered or not
    expect(page.locator("#batch [role=grid]")).to_have_attribute("aria-rowcount", "11")
    expect(page.locator(f"#batch img[alt='{batch[0].name}']").first).to_be_attached()
    link = page.locator("#downloads a[download='predictions.jsonl']")
    with page.expect_download() as download:
        link.click()
    records = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert [record["image_path"] for record in records] == [path.name for path in batch]
