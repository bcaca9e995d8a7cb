"""The browser demo end to end in a real headless chromium: upload a set, segment, download the masks.

Needs Debian's chromium (``apt-get install chromium``, at ``/usr/bin/chromium``), playwright and
Gradio (the ``test`` extra). Without them the test is skipped with a reason; with
``COSEGKIT_BROWSER_TESTS=required`` (as ``.ci/run`` sets it) it fails instead. Run it alone with
``python -m pytest -m browser tests/test_app_browser.py``.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cosegkit.testing import CHROMIUM_ARGS

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("COSEGKIT_CHROMIUM", "/usr/bin/chromium")
LOCAL = ("http://127.0.0.1", "http://localhost", "data:", "blob:")
LOOPBACK = ("127.0.0.1", "::1", "localhost", "0.0.0.0")

#: while a list is here, this process's connections and name look-ups beyond the machine go into it
_RECORDING: list[list[str]] = []


def _audit(event: str, args: tuple) -> None:
    if not _RECORDING:
        return
    if event == "socket.connect" and isinstance(args[1], tuple) and str(args[1][0]) not in LOOPBACK:
        _RECORDING[0].append(f"connect {args[1]}")
    elif event == "socket.getaddrinfo" and args[0] not in (None, *LOOPBACK):
        _RECORDING[0].append(f"look-up {args[0]}")


sys.addaudithook(_audit)  # audit hooks cannot be removed: it records only inside the test


def _needs(what: str, hint: str) -> None:
    """Skip, or fail where the browser test is required (CI)."""
    message = f"the browser test needs {what}: {hint}"
    if os.environ.get("COSEGKIT_BROWSER_TESTS") == "required":
        pytest.fail(message + " (COSEGKIT_BROWSER_TESTS=required)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        _needs(f"chromium at {CHROMIUM}", "apt-get install chromium chromium-driver (Debian), or set COSEGKIT_CHROMIUM")
    try:
        import gradio  # noqa: F401
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        _needs(err.name or "gradio and playwright", 'pip install "cosegkit[test]"')
    with sync_playwright() as playwright:
        # Debian's chromium, not a downloaded one: no `playwright install`
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_segments_an_uploaded_set_as_the_python_api_does(browser, tmp_path) -> None:
    from cosegkit.app import build_app, launch_app, load_choice, model_choices, set_class
    from cosegkit.engine.segment import segment_files
    from cosegkit.testing import tiny_model

    start = time.perf_counter()
    model = tiny_model(seed=5)
    model.image_size, model.set_size = 32, 2
    folder = model.save_pretrained(tmp_path / "tiny")
    rng = np.random.default_rng(1)
    photos = []
    for k, (w, h) in enumerate([(40, 30), (32, 32), (24, 48)]):
        photos.append(tmp_path / "photos" / f"photo{k}.png")
        photos[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(photos[-1])

    # what the Python API gives: the model loaded as the page loads it, segment_files as `cosegkit segment` runs it
    api_model = load_choice(model_choices([str(folder)])[str(folder)])
    found = []
    expected, _ = segment_files(
        api_model,
        photos,
        tmp_path / "api",
        set_size="all",
        by_folder=False,
        workers=0,
        on_set=lambda k, files, out: found.append(set_class(api_model, out, len(files))),
    )
    expected_class = found[0].describe().replace("set 0", "set 1")

    port = _free_port()
    server_side: list[str] = []
    _RECORDING.append(server_side)
    outside: list[str] = []
    page_app = build_app(model_choices([str(folder)]), work_dir=tmp_path)
    launch_app(page_app, port=port, block=False)
    try:
        page = browser.new_page()

        def offline(route) -> None:  # the page must load with nothing from the network
            if route.request.url.startswith(LOCAL):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", offline)
        page.goto(f"http://127.0.0.1:{port}", wait_until="networkidle", timeout=30_000)
        page.set_input_files("#photos input[type=file]", [str(p) for p in photos])
        names = [p.stem for p in photos]  # the list shows a name's stem and extension apart
        page.wait_for_function(  # every file uploaded and listed
            "names => names.every(n => document.querySelector('#photos').textContent.includes(n))",
            arg=names,
            timeout=20_000,
        )
        page.click("#segment")
        page.wait_for_selector("#archive a", timeout=45_000)
        shown_class = page.input_value("#classes textarea")
        captions = page.locator("#overlays").text_content()
        with page.expect_download() as download:
            page.click("#archive a")
        archive = zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes()))
    finally:
        page_app.close()
        _RECORDING.clear()

    assert outside == []  # the page: nothing from the network
    assert server_side == []  # the server: no connection or look-up beyond this machine
    assert shown_class == expected_class and "class probability" in shown_class
    assert all(p.stem in captions for p in photos)
    assert archive.namelist() == [p.name for p in expected]
    for mask in expected:  # exactly the Python API's masks, pixel for pixel
        got = np.asarray(Image.open(archive.open(mask.name)))
        assert got.dtype == np.uint8 and np.array_equal(got, np.asarray(Image.open(mask)))
    print(f"browser test: {time.perf_counter() - start:.1f} s")
