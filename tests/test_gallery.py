"""The label-issue gallery: hostile names stay text, every thumbnail loads, and the page opens from disk."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from browser import CHROMIUM, CHROMIUM_ARGS, chromium_playwright, watch
from PIL import Image

from toolkit.errors import DataError, UsageError
from toolkit.report.gallery import render_label_gallery

# Names a page that forgot to escape would turn into markup: a script, an entity, an attribute
# break-out, non-ASCII, and an element whose error handler would mark the window.
CLASSES = ["<script>alert(1)</script>", "a&b", '"quoted"', "ü", "<img src=x onerror=\"window.__xss=1\">"]
# A file name that is not safe in a URL or in HTML as it stands.
HOSTILE_FILE = "odd <b>'name' & \"x\" #1?%20.png"


@pytest.fixture
def gallery_data(tmp_path):
    """Images under ``tmp_path/data``, an issues table over them, and conflicting duplicate pairs."""
    root = tmp_path / "data"
    root.mkdir()
    colours = [(200, 40, 40), (40, 180, 60), (40, 60, 200), (220, 200, 40), (120, 40, 160), (90, 90, 90)]
    names = [f"img_{k}.png" for k in range(len(colours) - 1)] + [HOSTILE_FILE]
    for name, colour in zip(names, colours, strict=True):
        Image.new("RGB", (40 + 8 * len(name) % 30, 32), colour).save(root / name)
    (root / "broken.jpg").write_bytes(b"this is not a jpeg")
    names.append("broken.jpg")

    rows = []
    for k, name in enumerate(names):
        given, suggested = CLASSES[k % len(CLASSES)], CLASSES[(k + 1) % len(CLASSES)]
        probs = dict.fromkeys(CLASSES, 0.05)
        probs[suggested], probs[given] = 0.7, 0.1
        rows.append({"path": name, "label": given, "suggested_label": suggested, "label_quality": 0.1 + 0.05 * k,
                     "is_label_issue": k != 2, "rank": k + 1, **probs})
    issues = pd.DataFrame(rows)
    conflicts = pd.DataFrame({"a": ["img_0.png", HOSTILE_FILE], "b": ["img_1.png", "broken.jpg"],
                              "kind": ["near", "exact"], "distance": [3, 0],
                              "label_a": [CLASSES[0], CLASSES[3]], "label_b": [CLASSES[1], CLASSES[4]]})
    return issues, conflicts, root


def _render(gallery_data, out: Path, **kw) -> Path:
    issues, conflicts, root = gallery_data
    kw.setdefault("conflicts", conflicts)
    return render_label_gallery(issues, CLASSES, root, out, notes=["health score 0.42 <ok>", "noise & more"], **kw)


def test_page_escapes_names_and_shows_one_card_per_flagged_image(gallery_data, tmp_path):
    issues = gallery_data[0]
    page = _render(gallery_data, tmp_path / "out", title="Issues <of> 'data'")
    html = page.read_text(encoding="utf-8")

    assert page == tmp_path / "out" / "gallery.html"
    assert "<script" not in html and "<img src=x" not in html and "<b>'name'" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "a&amp;b" in html and "ü" in html
    assert "health score 0.42 &lt;ok&gt;" in html and "Issues &lt;of&gt;" in html
    assert html.count('class="card suspect"') == int(issues["is_label_issue"].sum()) == 6
    assert html.count('class="card pair"') == 2
    # The suspects come most suspicious first, and the image that is not flagged is left out.
    shown = re.findall(r'<span class="rank">#(\d+)</span>', html)
    assert shown == ["1", "2", "4", "5", "6", "7"]

    srcs = re.findall(r'<img [^>]*src="([^"]*)"', html)
    assert len(srcs) == 6 + 4
    assert all(re.fullmatch(r"thumbs/(\d{6}|unreadable)\.png", s) for s in srcs)
    assert all((page.parent / s).is_file() for s in srcs)
    # The unreadable image gets the placeholder and its reason, as a suspect and in a pair.
    assert srcs.count("thumbs/unreadable.png") == 2 and "unreadable: " in html
    with Image.open(page.parent / "thumbs/unreadable.png") as placeholder:
        assert placeholder.size[0] > 0


def test_top_limits_cards_and_a_rerun_removes_thumbnails_no_longer_used(gallery_data, tmp_path):
    out = tmp_path / "out"
    _render(gallery_data, out)
    assert len(list((out / "thumbs").glob("*.png"))) == 6  # the five readable images shown and the placeholder
    (out / "thumbs" / "mine.txt").write_text("not the gallery's")

    html = _render(gallery_data, out, top=2, conflicts=None).read_text(encoding="utf-8")

    assert html.count('class="card suspect"') == 2 and 'id="conflicts"' not in html
    assert "the 2 most suspicious are shown" in html
    assert sorted(p.name for p in (out / "thumbs").iterdir()) == ["000000.png", "000001.png", "mine.txt"]


def test_no_flagged_images_and_no_conflicts_say_so(gallery_data, tmp_path):
    issues, conflicts, root = gallery_data
    calm = issues.assign(is_label_issue=False)
    html = render_label_gallery(calm, CLASSES, root, tmp_path / "out", conflicts=conflicts.iloc[:0]).read_text()
    assert "0 of 7 images are flagged" in html and 'class="card' not in html
    assert "0 pairs of duplicate images" in html


def test_bad_input_is_refused_with_the_missing_column(gallery_data, tmp_path):
    issues, conflicts, root = gallery_data
    with pytest.raises(DataError, match="ü"):
        render_label_gallery(issues.drop(columns=["ü"]), CLASSES, root, tmp_path / "out")
    with pytest.raises(DataError, match="label_b"):
        render_label_gallery(issues, CLASSES, root, tmp_path / "out", conflicts=conflicts.drop(columns=["label_b"]))
    with pytest.raises(UsageError, match="top"):
        render_label_gallery(issues, CLASSES, root, tmp_path / "out", top=0)
    assert not (tmp_path / "out" / "gallery.html").exists()



def test_page_in_headless_chromium(gallery_data, tmp_path):
    sync_playwright = chromium_playwright()
    page_path = _render(gallery_data, tmp_path / "out")
    issues = gallery_data[0]
    flagged = issues[issues["is_label_issue"]].sort_values("rank")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            seen = watch(page)
            page.goto(page_path.as_uri(), wait_until="load")

            images = page.evaluate("Array.from(document.images, i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
            xss = page.evaluate("typeof window.__xss")
            given = page.locator(".card.suspect b.label").all_inner_texts()
            suggested = page.locator(".card.suspect b.suggested").all_inner_texts()
            paths = page.locator(".card.suspect code.path").all_inner_texts()
            class_cells = set(page.locator(".probs td.cls").all_inner_texts())
            pair_labels = page.locator(".card.pair b.label").all_inner_texts()
            notes = page.locator(".notes li").all_inner_texts()
            title = page.title()
        finally:
            browser.close()

    assert seen["console"] == [] and seen["errors"] == [] and seen["dialogs"] == []
    assert xss == "undefined"
    assert len(images) == 10 and all(done and width > 0 for _, done, width in images), images
    assert all(url.startswith("file://") for url in seen["requests"]), seen["requests"]
    assert given == flagged["label"].tolist() and suggested == flagged["suggested_label"].tolist()
    assert paths == flagged["path"].tolist() and HOSTILE_FILE in paths
    assert class_cells == set(CLASSES)
    assert pair_labels == [CLASSES[3], CLASSES[4], CLASSES[0], CLASSES[1]]  # the exact pair first
    assert notes == ["health score 0.42 <ok>", "noise & more"] and title == "Label issues"
