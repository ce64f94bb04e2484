"""The page in a real browser: headless Chromium (Debian's package) driven by selenium.

`streamlit run ui/app.py` is started on a free loopback port against the real tritonserver of the
`triton` fixture. The test types a prompt, sets the longest duration the server allows (120 s, a long
clip), clicks Generate, waits for the audio player and checks the progress events the page showed (the
page records them: how often a poll here happens to catch the bar depends on the machine's speed), and
saves screenshots (progress when caught, and the result) under build/test-output/ui/ (or $MUSICGEN_TEST_OUTPUT/ui/).
Chromium is installed by tests/debian_setup.sh (apt-get, as root) when missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from local_procs import LocalProcs, install_debian, start_page  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CJK_FONT = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"  # the Chinese page's screenshots need it
PROMPT = "lofi hip hop beat with mellow piano"


def output_dir() -> Path:
    base = Path(os.environ.get("MUSICGEN_TEST_OUTPUT") or ROOT / "build" / "test-output")
    out = base / "ui"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def chromium():
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK) and os.path.exists(CJK_FONT)):
        install_debian("chromium", "chromium-driver", "fonts-wqy-microhei")  # the font: the page's Chinese
    return CHROMIUM, CHROMEDRIVER


@pytest.fixture(scope="module")
def page_url(triton, tmp_path_factory):
    """`streamlit run ui/app.py` on a free port, talking to the test server."""
    from server.triton import find_free_port

    port = find_free_port()
    procs = LocalProcs()
    try:
        yield start_page(procs, triton.grpc_endpoint, port, tmp_path_factory.mktemp("streamlit") / "streamlit.log")
    finally:
        procs.stop()


def _browser(chromium, lang: str):
    """Headless Chromium whose preferred language (navigator.language, Accept-Language) is `lang`."""
    binary, driver_path = chromium
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1500",
        "--hide-scrollbars",
        "--mute-audio",
        f"--lang={lang}",
    ):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"intl.accept_languages": lang})
    return webdriver.Chrome(service=Service(driver_path), options=opts)


@pytest.fixture
def open_browser(chromium):
    """open_browser(lang) -> a headless Chromium preferring `lang`; all are closed after the test."""
    opened = []

    def open_(lang: str):
        opened.append(_browser(chromium, lang))
        return opened[-1]

    try:
        yield open_
    finally:
        for d in opened:
            d.quit()


@pytest.fixture
def driver(open_browser):
    return open_browser("en-US")


def _progress_text(d) -> str:
    try:
        bars = d.find_elements(By.CSS_SELECTOR, '[data-testid="stProgress"]')
        return " ".join(b.text for b in bars)
    except StaleElementReferenceException:
        return ""


def test_browser_generate_shows_progress_and_audio_player(driver, page_url):
    out = output_dir()
    d = driver
    d.get(page_url)
    wait = WebDriverWait(d, 60)
    box = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, 'textarea[aria-label="Prompt"]')))
    # the server status and the random-weights banner are on the page before anything is generated
    wait.until(lambda drv: "Ready" in drv.find_element(By.CSS_SELECTOR, '[data-testid="stSidebar"]').text)
    assert "RANDOM WEIGHTS" in d.find_element(By.TAG_NAME, "body").text
    box.click()
    box.send_keys(PROMPT)
    slider = d.find_element(By.CSS_SELECTOR, 'input[aria-label="Duration (seconds)"]')
    d.execute_script("arguments[0].focus()", slider)
    slider.send_keys(Keys.END)  # the server's limit, 120 s: a long clip (windows), long enough to watch progress
    thumb = d.find_element(By.CSS_SELECTOR, '[data-testid="stSlider"] [data-testid="stSliderThumbValue"]')
    wait.until(lambda drv: thumb.text.strip() == "120.00")
    # the advanced settings open and hold the model choice, sampling settings and the seed
    d.find_element(By.CSS_SELECTOR, '[data-testid="stExpander"] summary').click()
    wait.until(lambda drv: drv.find_element(By.CSS_SELECTOR, 'input[aria-label="Fixed seed"]').is_displayed())
    advanced = d.find_element(By.CSS_SELECTOR, '[data-testid="stExpander"]').text
    for label in ("Model", "Top-k", "Top-p", "Temperature", "Guidance scale", "Seed"):
        assert label in advanced, advanced
    d.save_screenshot(str(out / "01-form.png"))

    button = next(b for b in d.find_elements(By.CSS_SELECTOR, "button") if b.text.strip().endswith("Generate"))
    t0 = time.monotonic()
    button.click()

    # live progress: a screenshot if a poll catches the bar (the assertion is on what the page recorded, below)
    seen_progress = ""
    audio = None
    deadline = t0 + 150
    while time.monotonic() < deadline:
        text = _progress_text(d)
        if "elapsed" in text and "frames" in text and not seen_progress:
            seen_progress = text
            d.save_screenshot(str(out / "02-progress.png"))
        found = d.find_elements(By.CSS_SELECTOR, "audio")
        if found:
            audio = found[0]
            break
        time.sleep(0.1)
    assert audio is not None, (
        f"no audio player {time.monotonic() - t0:.0f} s after Generate; "
        f"page says: {d.find_element(By.TAG_NAME, 'body').text[-1500:]}"
    )
    # the browser loaded the WAV: its duration is the 120 s asked for
    try:
        WebDriverWait(d, 30).until(lambda drv: drv.execute_script("return arguments[0].readyState", audio) >= 1)
    except TimeoutException:
        pytest.fail("the audio element never loaded its source")
    duration = d.execute_script("return arguments[0].duration", audio)
    assert abs(duration - 120.0) < 0.1, duration
    WebDriverWait(d, 30).until(lambda drv: len(drv.find_elements(By.CSS_SELECTOR, '[data-testid="stImage"] img')) >= 2)
    WebDriverWait(d, 30).until(lambda drv: "Done in" in _progress_text(drv))
    body = d.find_element(By.TAG_NAME, "body").text
    assert "seed" in body and "top-k 250" in body and "WAV" in body
    time.sleep(0.5)  # let the plots paint
    d.save_screenshot(str(out / "03-result.png"))
    shutil.copy(out / "03-result.png", out / "result.png")
    # the progress events the page received and showed on its bar, as it recorded them: [frames done, total]
    log = WebDriverWait(d, 30).until(EC.presence_of_element_located((By.ID, "progress-received")))
    received = json.loads(log.get_attribute("textContent"))
    assert received, "the page showed no progress event before the result"
    assert all(0 <= done <= total and total > 0 for done, total in received), received
    assert [done for done, _ in received] == sorted(done for done, _ in received), received
    print(f"\nscreenshots in {out}; progress events shown: {len(received)}; caught by a poll: {seen_progress!r}")


def test_browser_in_chinese_follows_the_browser_language(open_browser, page_url):
    """A browser that prefers Chinese gets the Chinese page; a Chinese prompt is warned about next to the
    box and English style tags are offered; the switch turns the page to English for the session."""
    out = output_dir()
    d = open_browser("zh-CN")
    d.get(page_url)
    wait = WebDriverWait(d, 60)
    box = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, 'textarea[aria-label="提示词"]')))
    wait.until(lambda drv: "就绪" in drv.find_element(By.CSS_SELECTOR, '[data-testid="stSidebar"]').text)
    assert "演示模型" in d.find_element(By.TAG_NAME, "body").text  # the random-weights banner, in Chinese
    d.save_screenshot(str(out / "zh-01-form.png"))
    box.click()
    box.send_keys("轻松的钢琴曲")
    button = next(b for b in d.find_elements(By.CSS_SELECTOR, "button") if b.text.strip().endswith("生成"))
    button.click()
    wait.until(lambda drv: any("T5" in a.text for a in drv.find_elements(By.CSS_SELECTOR, '[data-testid="stAlert"]')))
    WebDriverWait(d, 150).until(lambda drv: drv.find_elements(By.CSS_SELECTOR, "audio"))
    WebDriverWait(d, 30).until(lambda drv: "完成，用时" in _progress_text(drv))
    body = d.find_element(By.TAG_NAME, "body").text
    assert "风格" in body and "乐器" in body  # the style tags' categories, opened by the warning
    for fmt in ("WAV", "FLAC", "MP3", "OGG"):
        assert fmt in body
    time.sleep(0.5)  # let the plots paint
    d.save_screenshot(str(out / "zh-02-result.png"))
    # a download, for real: encoded on click, named by the prompt's first words and the seed, -14 LUFS
    from musicgen_runtime import audio_io

    downloads = out / "zh-downloads"
    shutil.rmtree(downloads, ignore_errors=True)
    downloads.mkdir()
    d.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    files = {}
    for fmt in ("wav", "ogg", "mp3"):
        next(b for b in d.find_elements(By.CSS_SELECTOR, "button") if b.text.strip().endswith(fmt.upper())).click()
        WebDriverWait(d, 60).until(lambda drv, fmt=fmt: [f for f in downloads.iterdir() if f.suffix == f".{fmt}"])
        files[fmt] = next(f for f in downloads.iterdir() if f.suffix == f".{fmt}")
        assert re.fullmatch(rf"musicgen-1-轻松的钢琴曲-seed\d+\.{fmt}", files[fmt].name), files[fmt].name
    (wav, rate), (ogg, _), (mp3, _) = (audio_io.read_audio(files[f]) for f in ("wav", "ogg", "mp3"))
    assert rate == 32000 and wav.shape == (1, 8 * 32000)
    assert abs(ogg.shape[1] - wav.shape[1]) < 2048 and abs(mp3.shape[1] - wav.shape[1]) < 4096
    # levelled as the CLI levels: -14 LUFS, or less where the -1 dBFS peak ceiling stops the gain
    lufs, peak_db = audio_io.loudness(wav, rate), 20 * np.log10(np.abs(wav).max())
    assert lufs == pytest.approx(-14.0, abs=0.2) or (lufs < -14.0 and peak_db == pytest.approx(-1.0, abs=0.1))
    # the same levelled audio, lossy-coded (the random-weights noise is mostly treble, which MP3 at
    # 32 kHz cuts: its loudness is not compared here; tests/test_ui_logic.py checks MP3 on a tone)
    assert audio_io.loudness(ogg, rate) == pytest.approx(lufs, abs=1.0)
    # the switch: English from now on in this session
    english = next(
        e for e in d.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebar"] label') if e.text.strip() == "English"
    )
    english.click()
    wait.until(lambda drv: drv.find_elements(By.CSS_SELECTOR, 'textarea[aria-label="Prompt"]'))
    check = next(b for b in d.find_elements(By.CSS_SELECTOR, "button") if b.text.strip().endswith("Check again"))
    check.click()  # another rerun of the page: the choice sticks
    wait.until(lambda drv: "Ready" in drv.find_element(By.CSS_SELECTOR, '[data-testid="stSidebar"]').text)
    assert d.find_elements(By.CSS_SELECTOR, 'textarea[aria-label="Prompt"]')
    assert not d.find_elements(By.CSS_SELECTOR, 'textarea[aria-label="提示词"]')
    d.save_screenshot(str(out / "zh-03-switched-to-english.png"))
    print(f"\nChinese screenshots in {out}")


def test_browser_continues_an_uploaded_piece(driver, page_url, tmp_path):
    """A real upload (the file input) into the audio-prompt uploader: the clip played is the piece
    followed by the new music, and the page says where the new music starts."""
    import soundfile as sf

    from export.signals import synth_melody

    piece = tmp_path / "piece.wav"
    sf.write(piece, synth_melody(1.0, 44100, 2, seed=3).T, 44100)
    d = driver
    d.get(page_url)
    wait = WebDriverWait(d, 60)
    box = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, 'textarea[aria-label="Prompt"]')))
    wait.until(lambda drv: "Ready" in drv.find_element(By.CSS_SELECTOR, '[data-testid="stSidebar"]').text)
    box.click()
    box.send_keys(PROMPT)
    uploader = next(
        u for u in d.find_elements(By.CSS_SELECTOR, '[data-testid="stFileUploader"]') if "Continue a piece" in u.text
    )
    uploader.find_element(By.CSS_SELECTOR, 'input[type="file"]').send_keys(str(piece))
    wait.until(lambda drv: "piece.wav" in uploader.text)
    button = next(b for b in d.find_elements(By.CSS_SELECTOR, "button") if b.text.strip().endswith("Generate"))
    button.click()
    audio = WebDriverWait(d, 150).until(lambda drv: (drv.find_elements(By.CSS_SELECTOR, "audio") or [None])[0])
    WebDriverWait(d, 30).until(lambda drv: drv.execute_script("return arguments[0].readyState", audio) >= 1)
    # the default 8 s of new music after the 1 s piece (50 codec frames at 50 Hz)
    assert abs(d.execute_script("return arguments[0].duration", audio) - 9.0) < 0.05
    wait.until(
        lambda drv: "Continued: the first 1.00 s are the uploaded piece" in drv.find_element(By.TAG_NAME, "body").text
    )
    time.sleep(0.5)  # let the plots paint
    d.save_screenshot(str(output_dir() / "continued.png"))
