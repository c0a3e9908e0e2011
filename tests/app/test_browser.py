"""The web UI in Debian's chromium (headless, through Playwright): upload, results, click-through, errors.

Screenshots go to a temporary folder and, when MSIR_SCREENSHOT_DIR is set, there too.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.app.helpers import LiveServer, class_image, png_bytes

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def browser_page(request: pytest.FixtureRequest) -> Iterator[tuple[object, LiveServer]]:
    if not CHROMIUM.exists():
        message = "install Debian's chromium (apt-get install chromium) to run the browser test"
        if _in_ci():
            pytest.fail(message + " — required when CI=true")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    server: LiveServer = request.getfixturevalue("shared_server")  # only started when chromium is there
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900}), server
        finally:
            browser.close()


def _shoot(page, name: str, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get("MSIR_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path


def test_upload_search_click_through_and_errors(browser_page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page, server = browser_page
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    size = httpx.get(f"{server.url}/v1/collection").json()["size"]
    page.goto(server.url)
    expect(page.locator("#collection-info")).to_contain_text(f"{size:,} images")
    expect(page.locator("#label-filter option")).to_have_count(4)  # "Any class" + 3 classes

    # Upload through the file picker: the search runs by itself.
    query = tmp_path / "query.png"
    class_image(0, 1, size=64).save(query)
    page.fill("#k-input", "8")
    page.set_input_files("#file-input", str(query))
    expect(page.locator("#grid .result")).to_have_count(8)
    expect(page.locator("#results")).to_have_attribute("aria-busy", "false")
    expect(page.locator("#prediction-list .bar")).to_have_count(3)
    expect(page.locator("#predictions-heading")).to_have_text("Model prediction")  # the collection's own classes
    expect(page.locator("#knn-list .bar").first).to_be_visible()
    expect(page.locator("#status")).to_contain_text("8 similar images")
    first_labels = page.locator("#grid .result .labels").all_inner_texts()
    assert first_labels.count("red") >= 5, first_labels
    for img in page.locator("#grid img").all():
        assert img.get_attribute("alt"), "every thumbnail has alt text"
    page.wait_for_function("[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth)")
    _shoot(page, "msir-search", tmp_path)

    # Click a result: its neighbours replace the grid.
    second = page.locator("#grid .result").nth(1)
    clicked_id = second.get_attribute("data-id")
    second.click()
    expect(page.locator("#status")).to_contain_text(f"similar to stored image #{clicked_id}")
    expect(page.locator("#grid .result")).to_have_count(8)
    ids = [b.get_attribute("data-id") for b in page.locator("#grid .result").all()]
    assert clicked_id not in ids
    expect(page.locator("#preview")).to_have_attribute("src", f"/v1/images/{clicked_id}/thumbnail")
    _shoot(page, "msir-neighbours", tmp_path)

    # Keyboard: the result buttons are focusable and Enter activates them.
    page.locator("#grid .result").first.focus()
    next_id = page.locator("#grid .result").first.get_attribute("data-id")
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_contain_text(f"similar to stored image #{next_id}")

    # Drag and drop onto the drop zone.
    b64 = base64.b64encode(png_bytes(class_image(2, 3, size=48))).decode()
    transfer = page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
            return dt;
        }""",
        b64,
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    expect(page.locator("#status")).to_contain_text("similar images to dropped.png")

    # An API error in plain words, and the page keeps working.
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image at all")
    page.set_input_files("#file-input", str(bad))
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_contain_text("not an image format we can read")
    expect(page.locator("#grid .result")).to_have_count(0)  # no stale results under an error
    expect(page.locator("#preview")).to_be_hidden()
    _shoot(page, "msir-error", tmp_path)
    page.set_input_files("#file-input", str(query))
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#grid .result")).to_have_count(8)

    # Small screens: one column, nothing cut off.
    page.set_viewport_size({"width": 390, "height": 844})
    box = page.locator("#results").bounding_box()
    assert box is not None and box["width"] <= 390
    _shoot(page, "msir-mobile", tmp_path)
    assert not [e for e in console_errors if "415" not in e], console_errors


def test_heat_maps_region_query_and_min_score(browser_page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page, server = browser_page
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.goto(server.url)
    query = tmp_path / "query.png"
    class_image(0, 2, size=64).save(query)
    page.fill("#k-input", "6")
    page.set_input_files("#file-input", str(query))
    expect(page.locator("#grid .result")).to_have_count(6)

    # Heat-maps: one overlay per result and one on the query, each labelled with what it shows.
    page.check("#explain-toggle")
    expect(page.locator("#grid canvas.result-heatmap")).to_have_count(6)
    expect(page.locator("#query-heatmap")).to_be_attached()
    first_id = page.locator("#grid .result").first.get_attribute("data-id")
    expect(page.locator("#query-heatmap")).to_have_attribute("data-result-id", str(first_id))
    label = page.locator("#grid canvas.result-heatmap").first.get_attribute("aria-label")
    assert label and "sums to the score" in label, label
    # The query's map follows the result under the pointer.
    third = page.locator("#grid .result").nth(2)
    third.hover()
    expect(page.locator("#query-heatmap")).to_have_attribute("data-result-id", str(third.get_attribute("data-id")))
    page.wait_for_function("[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth)")
    shot = _shoot(page, "explain", tmp_path)
    assert shot.stat().st_size > 0
    # A stored image as the query (click a result): its neighbours are explained too (GET .../explain).
    clicked = page.locator("#grid .result").nth(1).get_attribute("data-id")
    page.locator("#grid .result").nth(1).click()
    expect(page.locator("#status")).to_contain_text(f"similar to stored image #{clicked}")
    expect(page.locator("#grid canvas.result-heatmap")).to_have_count(6)
    expect(page.locator("#query-heatmap")).to_be_attached()
    page.uncheck("#explain-toggle")
    expect(page.locator("canvas.heatmap")).to_have_count(0)
    again = tmp_path / "again.png"  # a new name: picking the same file again fires no change event
    again.write_bytes(query.read_bytes())
    page.set_input_files("#file-input", str(again))
    expect(page.locator("#status")).to_contain_text("similar images to again.png")

    # Region query: drag a box over the top-left quarter of the 64 px query; the crop (about 32 px) is the query.
    page.click("#region-button")
    expect(page.locator("#preview-frame")).to_have_class("preview-frame selecting")
    box = page.locator("#preview").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 1, box["y"] + 1)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3, steps=4)
    expect(page.locator("#region-box")).to_be_visible()
    _shoot(page, "region-select", tmp_path)
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5, steps=4)
    page.mouse.up()
    expect(page.locator("#status")).to_contain_text("similar images to region-")
    expect(page.locator("#grid .result")).to_have_count(6)
    width = page.evaluate("document.getElementById('preview').naturalWidth")
    assert 28 <= width <= 36, width  # the crop, not the whole 64 px image
    _shoot(page, "region", tmp_path)

    # Minimum score: nothing below it comes back.
    page.fill("#min-score", "0.999")
    page.click("#search-button")
    expect(page.locator("#results")).to_have_attribute("aria-busy", "false")
    scores = [float(t.split("score ")[1].split(" ")[0]) for t in page.locator("#grid .score").all_inner_texts()]
    assert all(s >= 0.999 for s in scores) and len(scores) < 6, scores
    page.fill("#min-score", "2")
    page.click("#search-button")
    expect(page.locator("#error")).to_contain_text("Minimum score must be a number from -1 to 1")
    assert not console_errors, console_errors


def test_a_model_of_other_classes_is_shown_as_such(browser_page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """When /v1/collection and the search say the head names the model's own classes (a model trained on other
    data), the UI heads them "Model classes (<dataset>), not this collection's", shows the reason and puts the
    neighbours' vote over the collection's labels first. The answers are the server's, marked as the API marks them
    for such a model (tests/app/test_predictions_scope.py)."""
    import json

    from playwright.sync_api import Route, expect

    page, server = browser_page
    note = "the model's 10 classes (trained on cifar10) are not this collection's labels"

    query = tmp_path / "query.png"
    class_image(0, 1, size=64).save(query)

    def foreign(route: Route) -> None:
        if route.request.method == "GET":
            response = httpx.get(route.request.url, timeout=30)
        else:  # Playwright's route.fetch() drops a multipart file: the query goes to the server directly
            image = {"image": (query.name, query.read_bytes(), "image/png")}
            response = httpx.post(route.request.url, files=image, data={"k": "8"}, timeout=60)
        body = response.json()
        body["predictions_scope"] = "model"
        if route.request.url.endswith("/v1/collection"):
            body.update(predictions_note=note, trained_on="cifar10")
        route.fulfill(status=response.status_code, content_type="application/json", body=json.dumps(body))

    page.route("**/v1/collection", foreign)
    page.route("**/v1/search", foreign)
    page.goto(server.url)
    page.set_input_files("#file-input", str(query))
    expect(page.locator("#grid .result").first).to_be_visible()
    expect(page.locator("#predictions-heading")).to_have_text("Model classes (cifar10), not this collection's")
    expect(page.locator("#predictions-note")).to_contain_text(note)
    expect(page.locator("#knn-heading")).to_have_text("Neighbours vote (this collection's labels)")
    # The vote leads: it comes before the model's classes in the page.
    order = page.locator(".predictions-wrap > div").evaluate_all("els => els.map(e => e.id)")
    assert order == ["knn", "predictions"], order
    _shoot(page, "msir-model-classes", tmp_path)
