"""The browser playground at ``/`` in headless Chromium (Debian's package), driven by Playwright.

A real browser loads the page, lists the voices, streams speech into Web Audio and shows time to
first audio and the real-time factor; the PCM it received is the native API's for the same seed.
It uploads a voice through the form, speaks with it, shows a server error, and takes a screenshot
(kept in ``$CSM_SCREENSHOT_DIR`` when set, else in the test's temporary directory).
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import aiohttp
import pytest

from tests.integration.test_voices import recording

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed here (.ci/run installs it with apt-get)"
)
# As the machine's probe runs it: root, no sandbox, no GPU, no background network (there is none).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
SAY = "Hello from the playground."


async def native_pcm(served, **fields: object) -> bytes:
    body = {"text": SAY, "output_format": "pcm16_24khz", **fields}
    async with aiohttp.ClientSession() as http, http.post(f"{served.url}/synthesize", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return base64.b64decode((await resp.json())["audio_base64"])


async def speak(page, timeout_ms: int = 60_000) -> str:
    await page.click("#speak")
    await page.wait_for_function(
        "['done', 'stopped'].includes(document.getElementById('status').textContent)"
        " || document.getElementById('status').className === 'error'",
        timeout=timeout_ms,
    )
    return await page.text_content("#status")


async def test_playground_in_headless_chromium(served, tmp_path):
    from playwright.async_api import async_playwright

    shots = Path(os.environ.get("CSM_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1000, "height": 1100})
            page_errors: list[str] = []
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            await page.goto(f"{served.url}/")
            await page.wait_for_function("document.getElementById('voice').dataset.loaded !== undefined")

            await page.fill("#text", SAY)
            await page.fill("#seed", "7")
            await page.fill("#max-ms", "800")
            assert await speak(page) == "done"
            received = int(await page.text_content("#bytes"))
            assert received == len(await native_pcm(served, seed=7, max_audio_length_ms=800))
            ttfa, rtf = float(await page.text_content("#ttfa")), float(await page.text_content("#rtf"))
            assert ttfa > 0 and rtf > 0
            assert int(await page.text_content("#duration")) == round(received / 2 / 24_000 * 1000)
            assert await page.text_content("#seed-used") == "7"

            # Seeds past 2**53 (JavaScript's exact integers) go out and come back digit for digit.
            await page.fill("#seed", str(2**53 + 1))
            assert await speak(page) == "done"
            assert await page.text_content("#seed-used") == "9007199254740993"  # Number() made it ...992
            await page.fill("#seed", "")  # a random 63-bit seed, shown, then used again
            assert await speak(page) == "done"
            drawn = await page.text_content("#seed-used")
            assert drawn.isdigit() and int(drawn) < 2**63
            await page.click("#reuse-seed")
            assert await page.input_value("#seed") == drawn
            assert await speak(page) == "done"
            assert await page.text_content("#seed-used") == drawn

            await page.set_input_files(
                "#voice-file", files=[{"name": "me.wav", "mimeType": "audio/wav", "buffer": recording()}]
            )
            await page.fill("#voice-name", "Browser voice")
            await page.fill("#voice-transcript", "Hi, this is Sam from the front desk.")
            await page.click("#upload")
            # The status says "created <id>" before the page reloads the voice list and selects
            # the new voice: wait for the select itself to hold that id, not for the status alone.
            created = await page.wait_for_function(
                """() => {
                    const m = document.getElementById('voice-status').textContent.match(/^created (\\S+)/);
                    return m !== null && document.getElementById('voice').value === m[1] ? m[1] : null;
                }""",
                timeout=60_000,
            )
            voice_id = await created.json_value()
            assert voice_id.startswith("voice_") and await page.input_value("#voice") == voice_id
            assert await speak(page) == "done"  # with the uploaded voice selected
            await page.screenshot(path=str(shots / "playground.png"), full_page=True)

            await page.fill("#text", "   ")
            status = await speak(page)
            assert status.startswith("error: ") and "input" in status, status
            assert page_errors == []
        finally:
            await browser.close()
    png = (shots / "playground.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
