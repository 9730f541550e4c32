"""The documentation site and an ``nsync.report`` page in a real browser (headless Chromium from the
distribution, driven by playwright): every main page renders with no console error, no failed
request and no broken image; screenshots go to ``runs/browser/`` (or ``NSYNC_SCREENSHOTS``).

Its own tier (``-m browser``, part of ``make test``); skipped, with the reason, where mkdocs,
playwright or a Chromium binary is missing (``apt-get install chromium``)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
#: The site's main pages (one per section of the navigation) and what each must show.
PAGES = {
    "index.html": "The pipeline",
    "getting-started/index.html": "The quickstart",
    "concepts/method/index.html": "Pairs, directions and lags",
    "concepts/partition/index.html": "unique share",
    "how-to/fit/index.html": "How the fit runs",
    "reference/config/index.html": "data.exclude_flags",
    "reference/api/index.html": "ActivationCache",
    "results/index.html": "quickstart",
    "cpu_study/results/index.html": "smollm2-135m",
}


def _chromium() -> str | None:
    for name in (os.environ.get("NSYNC_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[docs]')")
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium binary on PATH (apt-get install chromium, or set NSYNC_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield instance
        instance.close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> str:
    """The built site, served over HTTP on localhost (search and its worker do not load from file://)."""
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(out)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> Path:
    from nsync.analysis.report import main as report_main
    from nsync.config import load_config
    from nsync.testing.synthetic import write_synthetic_cache
    from nsync.fit import FitConfig, run_fit

    root = tmp_path_factory.mktemp("report")
    cache = write_synthetic_cache(root / "cache", "linear", n_episodes=30, turns=6, hidden=4, n_layers=2)
    run_fit(load_config(FitConfig, [f"out={root / 'fit'}", f"data.cache={cache}", "logger.kind=none", "progress=false",
                                    "data.split_seeds=[0]", "bootstrap=50"], prog="test"))
    # a controls table as wide as a real one (every control, long skip reasons), to check it fits the page
    controls = root / "controls"
    controls.mkdir()
    rows = [
        {"control": name, "sync_r2": 0.1, "sync_r2_std": 0.01, "sync_r2_unclipped": 0.05, "sync_r2_bias_corrected": 0.12, "ci95_low": 0.08,
         "ci95_high": 0.16, "diff_vs_main": -0.05, "diff_bias_corrected": -0.04, "diff_ci95_low": -0.07, "diff_ci95_high": -0.01,
         "sync_r2_A->B": 0.11, "sync_r2_B->A": 0.09,
         "skipped": "" if i % 2 else "no teacher-forced states of smollm2-135m@untrained in the cache: run python -m nsync reread kind=untrained first"}
        for i, name in enumerate(["main", "shuffled_partner", "observer", "untrained", "text_only", "same_time", "own_past", "lag_2"])
    ]
    pd.DataFrame(rows).to_csv(controls / "controls.csv", index=False)
    report_main([str(root / "fit"), str(controls), "--out", str(root / "report.html")])
    return root / "report.html"


def _screenshots() -> Path:
    folder = Path(os.environ.get("NSYNC_SCREENSHOTS", ROOT / "runs" / "browser"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _open(browser, url: str, shot: Path) -> tuple[str, list[str]]:
    """The page's text and what went wrong: console errors, failed requests, images that did not load."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.goto(url, wait_until="load")
    broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
    problems += [f"image did not load: {src}" for src in broken]
    # nothing may stick out of the page sideways (a wide table scrolls inside its own box)
    wide = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    if wide > 0:
        problems.append(f"the page is {wide} px wider than the window (a table or figure overflows)")
    page.screenshot(path=str(shot), full_page=True)
    text = page.inner_text("body")
    page.close()
    return text, problems


@pytest.mark.parametrize("path", list(PAGES))
def test_site_page_renders(browser, site, path):
    text, problems = _open(browser, site + path, _screenshots() / (path.replace("/", "_").removesuffix(".html") + ".png"))
    assert not problems, problems
    assert PAGES[path] in text


def test_report_page_renders(browser, report_page):
    text, problems = _open(browser, report_page.as_uri(), _screenshots() / "report.png")
    assert not problems, problems
    assert "SyncR²" in text


def test_the_overflow_check_catches_a_wide_table(browser, tmp_path):
    """The check above can fail: a table wider than the window, not in a scrolling box, is reported."""
    page = tmp_path / "wide.html"
    page.write_text("<html><body><table><tr>" + "<td>0.1234567</td>" * 300 + "</tr></table></body></html>")
    _, problems = _open(browser, page.as_uri(), tmp_path / "wide.png")
    assert any("wider than the window" in p for p in problems), problems
