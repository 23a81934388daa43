"""The HTML report: contents, escaping of web-supplied text, no network, and the spot-check loop in
a real headless Chromium: mark, save marks.json, ``review import``, a later export honours it."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers import carcrawl_cmd
from test_export_helpers import Shot, build_crawl, other_photos, vehicle_photos

from carcrawl.export import export
from carcrawl.models import Labels
from carcrawl.report import licence_name, link, merge_licences, plural, throughput_svg, write_report

pytestmark = pytest.mark.usefixtures("shared")

EVIL = "<script>alert(1)</script>"


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@pytest.fixture(scope="module")
def crawl(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes], list[bytes]]:
    out = tmp_path_factory.mktemp("report") / "out"
    kept = [p.read_bytes() for p in vehicle_photos(8)]
    rejected = [p.read_bytes() for p in other_photos(2)]
    labels = [Labels("ford", "mustang", "red"), Labels("toyota", "camry", "blue")]
    shots = [Shot(f"http://h{i}.example/{i}.jpg", labels[i % 2], b, title=f"{EVIL} photo {i}",
                  page_url="javascript:alert(2)" if i == 0 else f"https://cars.example/listing?id={i}&x=\"'",
                  license="CC BY 4.0" if i % 2 else None, source="openverse" if i % 2 else "bing")
             for i, b in enumerate(kept)]
    shots += [Shot(f"http://o.example/{i}.jpg", labels[0], b, keep=False, reason=("not_vehicle:dog", "interior")[i],
                   top5=(("dog", 0.9),)) for i, b in enumerate(rejected)]
    shots.append(Shot("http://dead.example/x.jpg", labels[0], None))
    build_crawl(out, shots)
    return out, kept, rejected


def test_report_contents_and_escaping(crawl: tuple) -> None:
    out, kept, rejected = crawl
    path = write_report(out)
    assert path == out / "report.html"
    page = path.read_text()
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert len(re.findall(r"<script\b", page)) == 1  # ours only, with the page's nonce
    assert "javascript:" not in page.replace("javascript:alert(2)</div>", "")  # shown as text at most, never a link
    assert not re.search(r'href="javascript', page)
    assert 'href="https://cars.example/listing?id=1&amp;x=&#34;&#39;"' in page  # markupsafe's escapes
    assert not re.search(r'(src|href)="(https?:)?//[^"]*\.(js|css)', page)  # no CDN
    assert "Content-Security-Policy" in page
    for text in ("ford_mustang", "toyota_camry", "not_vehicle:dog", "http_404", "openverse", "CC BY 4.0", "<svg"):
        assert text in page, text
    # the reason table counts rejections by what the image was (not one line per ImageNet class)
    assert re.search(r"<td>not_vehicle</td>\s*<td>1</td>", page) and re.search(r"<td>interior</td>\s*<td>1</td>", page)
    thumbs = list((out / "report_assets" / "thumbs").glob("*.jpg"))
    assert {t.stem for t in thumbs} == {sha(b) for b in kept + rejected}  # 8 kept (<= 8/class) + rejected sample
    assert all(t.stat().st_size < 64_000 for t in thumbs)


def test_link_and_plot_helpers() -> None:
    assert link("javascript:alert(1)") == "javascript:alert(1)"
    assert link("data:text/html,<b>x</b>") == "data:text/html,&lt;b&gt;x&lt;/b&gt;"
    assert link("http://a.example/?q=<x>").startswith('<a href="http://a.example/?q=&lt;x&gt;"')
    assert "Not enough" in throughput_svg([])
    svg = throughput_svg([(0.0, 1, 0, 0, 0, 0), (10.0, 1, 50, 10, 30, 0), (20.0, 1, 150, 10, 90, 0)])
    assert svg.count("<polyline") == 2 and "10.0/s" in svg  # peak: 100 URLs in 10 s


def test_plural_licence_names_and_the_time_axis() -> None:
    assert plural(1, "image") == "1 image" and plural(0, "image") == "0 images" and plural(2, "image") == "2 images"
    for a, b in (("CC0", "CC0 1.0"), ("Public domain", "Public Domain Mark 1.0"), ("cc-by-sa 4.0", "CC BY-SA 4.0"),
                 ("CC BY 2.0", "by 2.0"), ("pdm", "Public domain")):
        assert licence_name(a) == licence_name(b), (a, b)
    assert licence_name("CC BY 4.0") != licence_name("CC BY-SA 4.0") != licence_name("CC BY-NC 4.0")
    assert licence_name("All rights reserved") == "All rights reserved"
    assert merge_licences([("CC0", 3), ("CC0 1.0", 2), ("Public Domain Mark 1.0", 4), ("Public domain", 0)]) == [
        ("CC0 1.0", 5), ("Public domain", 4)]
    # an 11.3 s run sampled until 9 s: the axis still ends at the run's end
    samples = [(100.0 + t, 1, 10 * t, 0, 5 * t, 0) for t in range(10)]
    svg = throughput_svg(samples, span=(100.0, 111.3))
    assert ">11.3 s<" in svg and ">9.0 s<" not in svg
    assert ">9.0 s<" in throughput_svg(samples)  # without the span: the samples' own range


def test_a_missed_escape_cannot_inject(crawl: tuple, tmp_path: Path) -> None:
    """Labels, reasons and licences come from the web or the user: every one lands escaped."""
    out = tmp_path / "evil"
    body = vehicle_photos(1)[0].read_bytes()
    shots = [Shot("http://e.example/1.jpg", Labels(category=EVIL), body, title=EVIL, license=EVIL,
                  reason=f"vehicle:{EVIL}", top5=((EVIL, 0.9),), source="urls", page_url=f"http://p.example/{EVIL}")]
    build_crawl(out, shots)
    page = write_report(out, tmp_path / "evil.html").read_text()
    assert EVIL not in page and len(re.findall(r"<script\b", page)) == 1
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 5  # label, title, licence, reason, top label


def test_cli_report(crawl: tuple, tmp_path: Path) -> None:
    out, _, _ = crawl
    r = subprocess.run([*carcrawl_cmd(), "report", str(out), "--to", str(tmp_path / "r" / "spot.html")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "r" / "spot.html").exists() and (tmp_path / "r" / "spot_assets" / "thumbs").is_dir()


def _chrome() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.mark.skipif(_chrome() is None, reason="chromium and chromedriver are not installed (run `make browser`)")
def test_spot_check_in_a_real_browser(crawl: tuple, tmp_path: Path) -> None:
    selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
    del selenium
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    out, kept, rejected = crawl
    report = write_report(out, tmp_path / "report.html")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser, driver_path = _chrome()  # type: ignore[misc]
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,4000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        driver.get(report.resolve().as_uri())
        cards = {c.get_attribute("data-sha"): c for c in driver.find_elements(By.CSS_SELECTOR, ".card")}
        assert set(cards) == {sha(b) for b in kept + rejected}
        # the thumbnails render from disk under the page's Content-Security-Policy
        loaded = driver.execute_script("return Array.from(document.images).filter(i => i.naturalWidth > 0).length")
        assert loaded == len(cards)
        assert driver.execute_script("return document.querySelectorAll('script').length") == 1  # no injected script ran
        cards[sha(kept[0])].find_element(By.CSS_SELECTOR, "button[data-mark=wrong]").click()
        cards[sha(rejected[0])].find_element(By.CSS_SELECTOR, "button[data-mark=right]").click()
        cards[sha(kept[1])].find_element(By.CSS_SELECTOR, "button[data-mark=wrong]").click()
        cards[sha(kept[1])].find_element(By.CSS_SELECTOR, "button[data-mark=wrong]").click()  # second click clears
        assert "wrong" in cards[sha(kept[0])].get_attribute("class")
        assert driver.find_element(By.ID, "mark-count").text == "2 marked (1 right, 1 wrong)"
        state = driver.execute_script("return window.carcrawlMarks")
        assert state == {sha(kept[0]): "wrong", sha(rejected[0]): "right", sha(kept[1]): "none"}
        driver.find_element(By.ID, "save-marks").click()
        saved = downloads / "marks.json"
        for _ in range(100):  # wait for the download to land (not a timing assertion)
            if saved.exists() and saved.stat().st_size > 0:
                break
            time.sleep(0.1)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()
    data = json.loads(saved.read_text())
    assert data["format"] == "carcrawl-marks" and data["marks"] == state
    r = subprocess.run([*carcrawl_cmd(), "review", "import", str(saved), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and "applied 3 marks" in r.stdout, r.stderr
    export(out, "imagefolder", tmp_path / "ds")
    files = {p.stem for p in (tmp_path / "ds").rglob("*.*") if p.parent.parent.name in ("train", "val", "test")}
    assert sha(kept[0]) not in files and sha(rejected[0]) in files and sha(kept[1]) in files
    # the next report shows the imported marks
    page = write_report(out, tmp_path / "again.html").read_text()
    assert f'data-sha="{sha(kept[0])}" data-mark="wrong"' in page
