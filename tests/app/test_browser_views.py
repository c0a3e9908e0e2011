"""The web UI's Duplicates and Map views and the "more / less like this" feedback, in Debian's chromium.

MSIR_SCREENSHOT_DIR=docs/screenshots writes the committed screenshots (duplicates.png, map.png, feedback.png).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.app.helpers import class_image
from tests.app.test_browser import _shoot, browser_page  # noqa: F401 - the fixture is found by name

pytestmark = pytest.mark.browser


def test_duplicates_view_lists_groups_and_opens_a_member(browser_page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from playwright.sync_api import expect

    page, server = browser_page
    # A threshold that splits the tiny collection into several groups (its images are distinct: the groups come
    # from thresholds below the calibrated one, where copy descriptors of alike pictures meet).
    threshold, answer = 0.4, None
    for candidate in (0.9999, 0.9995, 0.999, 0.998, 0.995, 0.99, 0.98, 0.95, 0.9, 0.8, 0.6, 0.4):
        answer = httpx.get(f"{server.url}/v1/duplicates", params={"threshold": candidate, "limit": 20}).json()
        threshold = candidate
        if answer["total_groups"] >= 2:
            break
    assert answer is not None and answer["total_groups"] >= 1
    page.goto(f"{server.url}/#duplicates")
    expect(page.locator("#duplicates-view")).to_be_visible()
    expect(page.locator("#results")).to_be_hidden()
    default = httpx.get(f"{server.url}/v1/duplicates").json()  # the server's default threshold, shown first
    expect(page.locator("#duplicates-status")).to_contain_text(f"at cosine ≥ {default['threshold']}")
    expect(page.locator("#duplicates-threshold")).to_have_value(str(default["threshold"]))
    page.fill("#duplicates-threshold", str(threshold))
    page.click("#duplicates-form button[type=submit]")
    expect(page.locator("#duplicates-status")).to_contain_text(f"{answer['total_groups']} groups")
    groups = page.locator("#duplicates-groups > li")
    expect(groups).to_have_count(len(answer["groups"]))
    first = [m["id"] for m in answer["groups"][0]["members"]]
    ids = [b.get_attribute("data-id") for b in groups.first.locator(".result").all()]
    assert ids == [str(i) for i in first]
    page.wait_for_function(
        "[...document.querySelectorAll('#duplicates-groups img')].every(i => i.complete && i.naturalWidth)"
    )
    _shoot(page, "duplicates", tmp_path)
    groups.first.locator(".result").nth(1).click()
    expect(page.locator("#status")).to_contain_text(f"similar to stored image #{first[1]}")
    expect(page.locator("#duplicates-view")).to_be_hidden()
    assert page.url.endswith("#search")


def test_map_view_colours_by_label_and_opens_neighbours(browser_page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from playwright.sync_api import expect

    page, server = browser_page
    answer = httpx.get(f"{server.url}/v1/map").json()
    page.goto(server.url)
    page.click("#tab-map")
    expect(page.locator("#map-view")).to_be_visible()
    points = page.locator("#map-plot circle")
    expect(points).to_have_count(len(answer["points"]))
    expect(page.locator("#map-legend li")).to_have_count(len({p["label"] for p in answer["points"]}))
    colours = {p.get_attribute("fill") for p in points.all()}
    assert len(colours) == len({p["label"] for p in answer["points"]})
    expect(page.locator("#map-status")).to_contain_text("PCA")
    _shoot(page, "map", tmp_path)
    point = points.nth(5)
    chosen = point.get_attribute("data-id")
    point.click()
    expect(page.locator("#status")).to_contain_text(f"similar to stored image #{chosen}")
    expect(page.locator("#grid .result").first).to_be_visible()


def test_more_and_less_like_this_steer_the_search(browser_page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from playwright.sync_api import expect

    page, server = browser_page
    page.goto(server.url)
    query = tmp_path / "query.png"
    class_image(0, 1, size=64).save(query)
    page.fill("#k-input", "8")
    page.set_input_files("#file-input", str(query))
    expect(page.locator("#grid .result")).to_have_count(8)
    plain = [b.get_attribute("data-id") for b in page.locator("#grid .result").all()]

    with page.expect_response("**/v1/search/feedback") as answered:
        page.locator("#grid .feedback-more").nth(1).click()
    assert answered.value.status == 200
    expect(page.locator("#status")).to_contain_text("steered by your feedback")
    expect(page.locator("#steering")).to_contain_text("1 “more like this” and 0 “less like this”")
    steered = [b.get_attribute("data-id") for b in page.locator("#grid .result").all()]
    assert plain[1] not in steered and len(steered) == 8  # a positive example is not shown again
    # What the page sent: the uploaded query and the chosen result as positive examples.
    expected = httpx.post(
        f"{server.url}/v1/search/feedback",
        files={"positive": ("query.png", query.read_bytes(), "image/png")},
        data={"positive_id": plain[1], "k": "8"},
    ).json()
    assert steered == [str(n["id"]) for n in expected["neighbours"]]

    less = page.locator("#grid .result").nth(0).get_attribute("data-id")
    page.locator("#grid .feedback-less").nth(0).click()
    expect(page.locator("#steering")).to_contain_text("1 “more like this” and 1 “less like this”")
    expect(page.locator(f'#grid .result[data-id="{less}"]')).to_have_count(0)
    _shoot(page, "feedback", tmp_path)

    page.click("#steering-clear")
    expect(page.locator("#steering")).to_be_hidden()
    expect(page.locator("#status")).to_contain_text("similar images to query.png")
    assert [b.get_attribute("data-id") for b in page.locator("#grid .result").all()] == plain
