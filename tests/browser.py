"""Headless Chromium as a reader of a report: what the page shows, not what the HTML file contains.

Shared by the report tests. ``visible_images`` loads a copy of the page with a small script (the report's own
Content-Security-Policy forbids scripts) that counts the images that decoded and are drawn at a readable size;
``screenshot`` renders the page itself, CSP intact; ``colourful_pixels`` counts what a plot adds to a picture.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
SKIP_REASON = "/usr/bin/chromium is not installed (apt-get install chromium)"
PROBE = ("<script>window.addEventListener('load', () => { const i = Array.from(document.images); "
         "const seen = i.filter(x => x.complete && x.naturalWidth > 0 && x.getBoundingClientRect().width > 200 "
         "&& x.getBoundingClientRect().height > 100); "
         "document.title = 'IMAGES ' + seen.length + '/' + i.length; });</script>")


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile / 'chromium-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def visible_images(html: str, tmp: Path) -> tuple[int, int, str]:
    """(images drawn at a readable size, images in the page, the rendered DOM) for the page ``html``."""
    probe = tmp / "probe.html"
    probe.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
                     .replace("</body>", PROBE + "</body>"), encoding="utf-8")
    proc = chromium(tmp, "--window-size=1200,900", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    found = re.search(r"<title>IMAGES (\d+)/(\d+)</title>", proc.stdout)
    assert found, f"Chromium did not render the page: {proc.stderr[-2000:]}"
    return int(found.group(1)), int(found.group(2)), proc.stdout


def screenshot(html: str, tmp: Path) -> Path:
    """A PNG of the page as a person would see it (CSP intact, a tall window so every section is in it)."""
    page, png = tmp / "report.html", tmp / "report.png"
    page.write_text(html, encoding="utf-8")
    proc = chromium(tmp, f"--screenshot={png}", "--window-size=1200,7000", "--hide-scrollbars", page.as_uri())
    assert png.exists(), proc.stderr[-2000:]
    return png


def colourful_pixels(png: Path) -> int:
    from matplotlib import image

    rgb = image.imread(str(png))[..., :3]
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    return int((spread > 0.25).sum())
