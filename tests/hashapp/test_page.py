"""The query page in a real browser: headless Chromium (Debian's chromium + chromium-driver)
driven by Selenium uploads an image and reads the neighbours off the page."""

from __future__ import annotations

import shutil

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")

from hashapp.service import SearchService  # noqa: E402
from hashapp.web import create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no browser: install Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_upload_an_image_and_read_the_neighbours(shared_build, digits_folder, browser, running_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from hashapp.query import search_images

    query = sorted((digits_folder / "3").iterdir())[4]
    (want,) = search_images(shared_build / "index", [query], k=5, rerank=False)  # the page starts without
    with running_server(create_app(SearchService(shared_build / "index"))) as url:
        browser.get(url + "/")
        WebDriverWait(browser, 30).until(lambda d: "120 codes" in d.find_element(By.ID, "stats").text)
        k = browser.find_element(By.ID, "k")
        k.clear()
        k.send_keys("5")
        browser.find_element(By.ID, "image").send_keys(str(query))
        WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "figure.neighbour")) == 5)
        figures = browser.find_elements(By.CSS_SELECTOR, "figure.neighbour")
        got = [(int(f.get_attribute("data-id")), f.find_element(By.CLASS_NAME, "class").text,
                int(f.find_element(By.CLASS_NAME, "distance").text)) for f in figures]
        assert got == [(n["id"], n["class"], n["distance"]) for n in want["neighbours"]]
        assert browser.find_element(By.ID, "voted").text == want["voted_class"]
        # Thumbnails are real images served by the same process.
        WebDriverWait(browser, 30).until(lambda d: all(
            d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0
            for img in d.find_elements(By.CSS_SELECTOR, "figure.neighbour img")))
        # The rerank toggle re-runs the search with Euclidean distances.
        browser.find_element(By.ID, "rerank").click()
        WebDriverWait(browser, 60).until(lambda d: "euclidean" in d.find_element(By.ID, "summary").text)
        assert len(browser.find_elements(By.CSS_SELECTOR, "figure.neighbour")) == 5
