#!/usr/bin/env python
"""Check the rendered book the way a reader sees it (part of ``make test``).

For every page in ``_build/html``: load it in headless Chromium over a localhost server, save a
screenshot under ``output/screenshots/``, and fail when

* a chapter's figures are missing (fewer ``<img>`` than PNG outputs in its notebook, or an image
  file that does not exist),
* an error output or a widget that failed to render appears,
* a chapter page lacks the Colab launch button, or
* any internal link or anchor is broken.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlparse

from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "output" / "screenshots"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--disable-dev-shm-usage"]
ERROR_MARKERS = ["Traceback (most recent call last)", "Error displaying widget", "output traceback"]


#: headless-capable browsers, in the order `make check-pages` looks for them (PATH names, then macOS apps)
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MAC_APPS = ("/Applications/Chromium.app/Contents/MacOS/Chromium",
            "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome")


def find_chromium() -> str:
    """``$CHROMIUM`` (set by the Makefile), else the first browser of :data:`BROWSERS` / :data:`MAC_APPS` found."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    for app in MAC_APPS:
        if os.access(app, os.X_OK):
            return app
    sys.exit("error: headless Chromium or Chrome not found; install it (Debian: sudo apt-get install chromium "
             "fonts-noto-cjk; macOS: brew install --cask chromium)")


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = functools.partial(_QuietHandler, directory=str(directory))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, port


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: D401 - keep test output readable
        pass


def chromium(binary: str, url: str, *extra: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
                           capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"chromium failed on {url}: {r.stderr.strip().splitlines()[-1:]}")
    return r.stdout


def png_outputs(ipynb: Path) -> int:
    """PNG outputs of visible cells (not in hidden cells, not inside widget outputs)."""
    import nbformat

    nb = nbformat.read(ipynb, as_version=4)
    n = 0
    for c in nb.cells:
        if c.cell_type != "code" or {"remove-cell", "remove-output"} & set(c.metadata.get("tags", [])):
            continue
        n += sum("image/png" in o.get("data", {}) for o in c.get("outputs", []))
    return n


def check_links(page: Path, soup: BeautifulSoup, ids_cache: dict[Path, set[str]]) -> list[str]:
    problems = []
    for a in soup.find_all("a", href=True):
        href = a["href"]
        u = urlparse(href)
        if u.scheme or href.startswith(("mailto:", "javascript:")):
            continue
        target = page if not u.path else (page.parent / unquote(u.path)).resolve()
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            problems.append(f"{page.relative_to(HTML)}: broken link {href}")
            continue
        if u.fragment and target.suffix == ".html":
            if target not in ids_cache:
                t = BeautifulSoup(target.read_text(encoding="utf-8"), "html.parser")
                ids_cache[target] = {el["id"] for el in t.find_all(id=True)}
            if unquote(u.fragment) not in ids_cache[target]:
                problems.append(f"{page.relative_to(HTML)}: broken anchor {href}")
    for img in soup.find_all("img", src=True):
        u = urlparse(img["src"])
        if not u.scheme and not img["src"].startswith("data:"):
            if not (page.parent / unquote(u.path)).resolve().exists():
                problems.append(f"{page.relative_to(HTML)}: missing image {img['src']}")
    return problems


def check_page(binary: str, port: int, page: Path, static: BeautifulSoup) -> tuple[Path, list[str]]:
    """Render one page (DOM + screenshot in one headless load) and list what a reader would see wrong."""
    rel = page.relative_to(HTML)
    url = f"http://127.0.0.1:{port}/{rel.as_posix()}"
    shot = SHOTS / (rel.with_suffix("").as_posix().replace("/", "__") + ".png")
    # one headless load gives both the rendered DOM (stdout) and the screenshot (half the time of two)
    dom = chromium(binary, url, "--virtual-time-budget=15000", "--window-size=1280,2600",
                   f"--screenshot={shot}", "--dump-dom")
    problems = []
    if static.select(".math") and "mjx-container" not in dom:
        problems.append(f"{rel}: math did not render (MathJax missing?)")
    for marker in ERROR_MARKERS:
        if marker in dom:
            problems.append(f"{rel}: rendered page shows {marker!r}")
    ipynb = (ROOT / rel).with_suffix(".ipynb")
    if rel.parts[0] == "chapters" and ipynb.exists():
        want = png_outputs(ipynb)
        got = sum("_images/" in (img.get("src") or "") for img in static.find_all("img"))
        if got < want:
            problems.append(f"{rel}: {got} figures rendered, notebook has {want}")
        if "colab.research.google.com" not in dom:
            problems.append(f"{rel}: no Colab launch button")
        if "application/vnd.jupyter.widget-view+json" in ipynb.read_text(encoding="utf-8"):
            rendered = BeautifulSoup(dom, "html.parser").select(".jupyter-widgets, .widget-slider, .widget-box")
            if not rendered:
                problems.append(f"{rel}: ipywidgets did not render (widget manager JS missing?)")
    return shot, problems


def main() -> int:
    if not (HTML / "index.html").exists():
        print("error: _build/html is missing; run `make html` first", file=sys.stderr)
        return 2
    binary = find_chromium()
    SHOTS.mkdir(parents=True, exist_ok=True)
    pages = sorted(p for p in HTML.rglob("*.html")
                   if not p.relative_to(HTML).parts[0].startswith("_") and p.name not in ("genindex.html", "search.html"))
    server, port = serve(HTML)
    problems: list[str] = []
    ids_cache: dict[Path, set[str]] = {}
    rendered = []
    for page in pages:
        rel = page.relative_to(HTML)
        static = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
        problems += check_links(page, static, ids_cache)
        if not (rel.name == "index.html" and len(rel.parts) == 1):  # the root index is a redirect stub
            rendered.append((page, static))
    try:  # two browsers at a time: each load is mostly one process waiting on one core
        with ThreadPoolExecutor(max_workers=2) as pool:
            for (page, _), (shot, found) in zip(rendered, pool.map(lambda ps: check_page(binary, port, *ps), rendered)):
                problems += found
                print(f"checked {page.relative_to(HTML)}  (screenshot {shot.relative_to(ROOT)})", flush=True)
    finally:
        server.shutdown()
    if problems:
        print("\n".join(["page check FAILED:", *problems]), file=sys.stderr)
        return 1
    print(f"page check: {len(pages)} pages OK")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
