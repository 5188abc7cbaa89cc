"""report.html in a real browser: headless Chromium (Debian's `chromium`, installed by
scripts/setup-browser.sh; `make test-browser` runs both) loads a real run's report with no console error and
no failed load, and its screenshot is not blank. The last tests prove the checks can fail."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from _chromium import PageCheck, check_page, find_chromium  # tests/_chromium.py

from converge.report.html import write_report

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:  # a failure, not a skip: a browser test that silently skips checks nothing
        pytest.fail("chromium is not on PATH: run scripts/setup-browser.sh first (`make test-browser` does)")
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_finished_run) -> Path:
    """The report of a real run: a seeded MLP on random 3-class data, 8 epochs at most."""
    out = tiny_finished_run(tmp_path_factory.mktemp("browser") / "run", hidden=32, n=240, lr=0.03)
    return write_report(out)


def ink(png: bytes) -> tuple[float, float]:
    """(share of pixels that are not near-white, grey-level standard deviation) of a screenshot."""
    from PIL import Image, ImageStat

    image = Image.open(io.BytesIO(png)).convert("L")
    histogram = image.histogram()
    return sum(histogram[:230]) / (image.width * image.height), ImageStat.Stat(image).stddev[0]


def is_blank(png: bytes) -> bool:
    share, spread = ink(png)
    return share < 0.01 or spread < 5.0


def problems(check: PageCheck) -> list[str]:
    return check.console_errors + check.failed_loads


def test_report_renders_cleanly(chromium, report, tmp_path):
    check = check_page(report, chromium=chromium)
    (tmp_path / "report.png").write_bytes(check.screenshot)  # kept in pytest's tmp folder for a look
    assert problems(check) == []
    assert not is_blank(check.screenshot), ink(check.screenshot)
    from PIL import Image

    width, height = Image.open(io.BytesIO(check.screenshot)).size
    assert width == 1200 and height > 1500  # the whole page: header, curves, tables


def test_console_errors_and_broken_images_are_detected(chromium, tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><body><h1>bad page</h1><script>console.error('planted')</script>"
                    "<img src='missing.png' alt='broken'></body></html>")
    check = check_page(page, chromium=chromium)
    assert any("planted" in line for line in check.console_errors), check
    assert any("missing.png" in line for line in check.failed_loads), check


def test_report_policy_blocks_anything_external(chromium, report, tmp_path):
    """The report's Content-Security-Policy turns a script or a remote image into a reported error."""
    page = tmp_path / "tampered.html"
    text = report.read_text(encoding="utf-8")
    page.write_text(text.replace("</main>", "<script>console.log('ran')</script>"
                                            "<img src='https://example.invalid/x.png'></main>"))
    check = check_page(page, chromium=chromium)
    assert len(check.console_errors) >= 2, check  # both refused, both reported
    assert any("Content Security Policy" in line for line in check.console_errors), check


def test_blank_page_is_detected(chromium, tmp_path):
    page = tmp_path / "blank.html"
    page.write_text("<!DOCTYPE html><html><body></body></html>")
    check = check_page(page, chromium=chromium)
    assert problems(check) == [] and is_blank(check.screenshot)
