"""The studio in a real browser: Playwright drives Debian's chromium (the `chromium` package;
Playwright's own browser download is never used) against a studio served on a free port.

On a finished run written by the fixture: open the runs page, open the run, filter its examples
to the fine-tuned model's errors and by a confusion-matrix cell, review five pairs with the
keyboard (one with a typed correction), export them and check the exported files. Every page
is saved as a screenshot (in the test's tmp folder, or SPECIALIZE_SCREENSHOTS=DIR);
SPECIALIZE_DOCS_SCREENSHOTS=1 writes the two in docs/images from the fixture run (the committed ones are of the real demo run).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
DOCS_SHOTS = {"run": "studio-run.png", "review": "studio-review.png"}

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def studio(tmp_path):
    import uvicorn

    from specialize.studio.app import create_app
    from specialize.studio.settings import StudioSettings
    from tests.review.fake_run import make_fake_run

    runs = tmp_path / "runs"
    make_fake_run(runs, "demo")
    (tmp_path / "support.jsonl").write_text(
        "".join(
            json.dumps({"input": f"question {i}", "output": ["card", "fees"][i % 2]}) + "\n"
            for i in range(40)
        )
    )
    port = _free_port()
    app = create_app(StudioSettings.for_host(runs, "127.0.0.1", registry=tmp_path / "registry"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "the studio did not start"
    yield f"http://127.0.0.1:{port}", runs
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(30_000)
        yield page
        browser.close()


def test_runs_run_filter_review_export_in_the_browser(studio, page, tmp_path):
    from specialize.data.checks import check_files
    from specialize.run_dir import RunDir
    from tests.review.fake_run import errors_of

    base, runs = studio
    shots = Path(os.environ.get("SPECIALIZE_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)

    def shot(name: str) -> None:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    # Runs page -> the run
    page.goto(base + "/")
    assert page.locator("#runs tbody tr").count() == 1
    assert page.locator("#runs .badge").inner_text() == "finished"
    shot("runs")
    page.click("text=demo")
    page.wait_for_url("**/runs/demo")
    page.wait_for_selector("#loss-chart svg polyline.train")  # the curve drawn in the page
    assert page.locator("#loss-chart svg polyline").count() == 2
    rows = page.locator("#examples tbody tr")
    assert rows.count() == 12
    shot("run")

    # Filter to the fine-tuned model's errors, then by a confusion cell
    page.select_option("#filter-kind", "errors")
    expected = errors_of(RunDir(runs / "demo"))
    assert page.locator("#examples tbody tr:visible").count() == len(expected) == 2
    assert page.locator("#filter-count").inner_text() == f"{len(expected)} of 12 rows"
    page.select_option("#filter-label", "card")
    assert page.locator("#examples tbody tr:visible").count() == 1
    shot("run-errors")
    page.select_option("#filter-kind", "all")
    page.select_option("#filter-label", "")
    page.select_option("#confusion-of", "zero-shot")
    page.click('table.confusion[data-contender="zero-shot"] td[data-reference="card"][data-reply="fees"]')
    visible = page.locator("#examples tbody tr:visible")
    assert visible.count() == 4  # zero-shot answered "fees" on the four "card" rows 0, 3, 6, 9
    assert page.locator("#filter-clear").is_visible()

    # Review five pairs with the keyboard
    page.goto(base + "/review")
    page.fill("#reviewer", "ada")
    page.click("#review-go")
    page.wait_for_selector("#judge")
    shot("review")
    for n, key in enumerate(["1", "2", "t", "b", "1"]):
        token = page.locator('input[name="token"]').input_value()
        assert "fine-tuned" not in page.locator("#judge").inner_text()  # names stay hidden
        if n == 4:
            page.fill("#corrected", "card")
            page.keyboard.press("Escape")  # leave the box; keys typed in it never answer
        with page.expect_navigation():
            page.keyboard.press(key)
        assert page.locator('input[name="token"]').input_value() != token
    assert "5 of" in page.locator("h1").inner_text()

    # Export, and check the files it wrote
    with page.expect_navigation():
        page.click("#export")
    shot("export")
    paths = {
        r.get_attribute("data-kind"): Path(r.locator(".path").inner_text())
        for r in page.locator("#exported tbody tr[data-kind]").all()
    }
    assert set(paths) >= {"dpo", "kto", "sft"}
    assert page.locator("#exported .badge.failed").count() == 0
    dpo = [json.loads(line) for line in paths["dpo"].read_text().splitlines()]
    assert dpo and all(set(r) == {"prompt", "chosen", "rejected"} for r in dpo)
    assert check_files(paths["dpo"]).ok and check_files(paths["kto"]).ok  # as `specialize check` does
    sft = check_files(paths["sft"])
    assert sft.ok and sft.rows == 1
    human = RunDir(runs / "demo").human_eval()
    assert human is not None and human.judgments == 5

    # The run page now has the human evaluation; the other pages render
    page.goto(base + "/runs/demo")
    assert page.locator("#human").is_visible()
    page.goto(base + "/new?data=support.jsonl")
    assert "40 rows" in page.locator("#check-report").inner_text()
    shot("new")
    for name in ("adapters", "playground", "drift"):
        page.goto(f"{base}/{name}")
        assert page.locator("h1").inner_text().lower().startswith(name[:5])
        shot(name)
    pages = {"runs", "run", "run-errors", "review", "export", "new", "adapters", "playground", "drift"}
    assert pages <= {p.stem for p in shots.glob("*.png")}
    if os.environ.get("SPECIALIZE_DOCS_SCREENSHOTS"):
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        for name, target in DOCS_SHOTS.items():
            shutil.copy(shots / f"{name}.png", DOCS_IMAGES / target)
