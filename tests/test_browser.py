"""The website as readers get it: every built page in headless Chromium (`make site` runs this).

Serves ``_build/html`` on a loopback port and drives Debian's ``chromium`` + ``chromium-driver``
with Selenium. Every external host is unresolvable (``--host-resolver-rules``), so the result is
the same offline and online: a page that needs a CDN fails here. Generic over pages: every
``*.html`` of the build is visited once, and the per-page checks read what that visit recorded.

Without chromium the module is skipped (``make site`` prints a banner); under ``CI=true`` a missing
browser is a failure.
"""
from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

pytestmark = pytest.mark.site

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "html"))  # BOOK_HTML: another build
SKIP_DIRS = {"_static", "_sources", "_images", "_sphinx_design_static", "_panels_static"}
PAGES = sorted(str(p.relative_to(HTML)) for p in HTML.rglob("*.html")
               if not SKIP_DIRS & set(p.relative_to(HTML).parts[:-1])) if HTML.exists() else []
MIN_SCALE = 0.75          # every image shown at >= 75 % of its natural width (DESIGN.md)
DESKTOP = (1280, 1000)

#: console messages that are not errors of the site; each entry says why
CONSOLE_ALLOW = [
    # none: the site should load without a single console error
]

#: text that must never reach a reader in a cell output
GARBAGE = [
    (re.compile(r"Traceback \(most recent call last\)"), "a traceback"),
    (re.compile(r"\d+%\|.*\|"), "a progress bar"),
    (re.compile(r"\bit/s\]|s/it\]"), "a progress bar"),
    (re.compile(r"\w+Warning: "), "a warning"),
    (re.compile(r"\[IPKernelApp\]|\x1b\["), "kernel or terminal noise"),
]
#: raw TeX in the text of a page once MathJax is done
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\begin\{|\\frac|\\mathbb|\\sigma")
#: MyST/Markdown syntax left in the text of a page (a glued string with backticks in it, a pipe
#: table shown as text)
RAW_MYST = re.compile(r"`|\{(glue|cite|numref|eq|ref|doc)(:\w+)?\}|^:::|\]\(#|\|\s*[-—–]+:?\s*\|", re.M)


def browser_paths():
    chrome = next(filter(None, map(shutil.which, ["chromium", "chromium-browser", "google-chrome"])), None)
    return chrome, shutil.which("chromedriver")


class Recorder(http.server.SimpleHTTPRequestHandler):
    """Serves the build and records ``(page being visited, path, status)`` of every request."""

    log: list = []
    page = None

    def log_request(self, code="-", size="-"):
        type(self).log.append((type(self).page, self.path, int(code) if str(code).isdigit() else 0))

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    assert HTML.exists(), f"{HTML} missing: build the book first (make book)"
    handler = type("Handler", (Recorder,), {"log": [], "page": None})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(HTML)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd, handler
    httpd.shutdown()


@pytest.fixture(scope="module")
def driver():
    chrome, chromedriver = browser_paths()
    if not (chrome and chromedriver):
        msg = "BROWSER TEST SKIPPED: no chromium (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg.replace("SKIPPED", "FAILED (CI=true)"))
        pytest.skip(msg)
    os.environ.setdefault("SE_OFFLINE", "true")       # Selenium Manager: no downloads,
    os.environ.setdefault("SE_AVOID_STATS", "true")   # no usage statistics sent
    webdriver = pytest.importorskip("selenium.webdriver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                f"--window-size={DESKTOP[0]},{DESKTOP[1]}", "--force-device-scale-factor=1"]:
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=chromedriver))
    drv.set_script_timeout(30)
    yield drv
    drv.quit()


# One script per page gathers everything the checks need, once MathJax (if any) is done.
VISIT_JS = r"""
const done = arguments[arguments.length - 1];
(async () => {
  const r = {};
  const hasMath = document.querySelector('.math') !== null;
  r.mathjax = typeof MathJax !== 'undefined' && !!(MathJax.startup && MathJax.startup.promise);
  if (r.mathjax) { try { await MathJax.startup.promise; } catch (e) { r.mathjaxError = String(e); } }
  r.math = hasMath;
  r.untypeset = [...document.querySelectorAll('.math')].filter(e => !e.querySelector('mjx-container'))
      .slice(0, 5).map(e => e.textContent.slice(0, 80));
  const main = document.querySelector('main') || document.body;
  const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT, {acceptNode: n =>
      n.parentElement.closest('pre, code, script, style, mjx-container, .cell_input, textarea')
        ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT});
  let text = ''; while (walker.nextNode()) text += walker.currentNode.textContent + ' ';
  r.text = text;
  const imgs = [...document.querySelectorAll('img')];
  imgs.forEach(i => { if (i.loading === 'lazy') i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  r.images = imgs.map(i => ({src: i.getAttribute('src'), complete: i.complete,
      natural: i.naturalWidth, shown: i.getBoundingClientRect().width,
      visible: i.offsetParent !== null}));
  r.outputs = [...document.querySelectorAll('.cell_output .output, .cell_output pre')]
      .map(e => ({cls: e.className, text: e.textContent}));
  r.stderr = document.querySelectorAll('.cell_output .stderr, .output.stderr').length;
  r.widgetState = [...document.querySelectorAll('script')]
      .filter(s => s.type === 'application/vnd.jupyter.widget-state+json').length;
  const header = document.querySelector('header.bd-header');
  r.header = header ? header.getBoundingClientRect().height : 0;
  r.searchFields = [...document.querySelectorAll('.search-button-field')]
      .filter(e => e.getBoundingClientRect().width > 0).length;
  done(r);
})();
"""


# Code cells, printed outputs and display equations wider than their box (solutions opened by
# then, folded cells opened).
WIDE_JS = r"""
document.querySelectorAll('details').forEach(d => { d.open = true; });
const kind = e => e.closest('.cell_input') ? 'code: ' : e.matches('pre') ? 'output: ' : 'equation: ';
return [...document.querySelectorAll(
    'div.cell_input pre, div.cell_output pre, mjx-container[display="true"]')]
  .filter(e => e.scrollWidth > e.clientWidth + 1)
  .map(e => kind(e) + e.textContent.split('\n')
       .reduce((a, b) => b.length > a.length ? b : a, '').slice(0, 100));
"""


def visible(drv, el):
    return drv.execute_script(
        "const r = arguments[0].getBoundingClientRect(); "
        "return r.width > 0 && r.height > 0 && getComputedStyle(arguments[0]).visibility !== 'hidden';", el)


def check_solutions(drv):
    """Each solution is folded on load and shows its body after one click on its title."""
    from selenium.webdriver.common.by import By

    problems = []
    for i, sol in enumerate(drv.find_elements(By.CSS_SELECTOR, ".solution")):
        body = [el for el in sol.find_elements(By.XPATH, "./*")
                if "admonition-title" not in (el.get_attribute("class") or "")]
        title = sol.find_elements(By.CSS_SELECTOR, ".admonition-title")
        if not body or not title:
            problems.append(f"solution {i}: no title or body")
            continue
        if any(visible(drv, el) for el in body):
            problems.append(f"solution {i} is not folded")
            continue
        drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", title[0])
        title[0].click()
        deadline = time.time() + 3
        while time.time() < deadline and not any(visible(drv, el) for el in body):
            time.sleep(0.05)
        if not any(visible(drv, el) for el in body):
            problems.append(f"solution {i} does not open on click")
    return problems


@pytest.fixture(scope="module")
def visits(server, driver):
    """Visit every page once (desktop width) and record what the checks need."""
    httpd, handler = server
    base = f"http://127.0.0.1:{httpd.server_address[1]}/"
    out = {}
    for page in PAGES:
        handler.page = page
        driver.get_log("browser")  # drop what an earlier page left
        driver.get(base + page)
        rec = driver.execute_async_script(VISIT_JS)
        rec["solutions"] = check_solutions(driver)
        rec["wide"] = driver.execute_script(WIDE_JS)
        rec["console"] = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        rec["requests"] = [(p, c) for pg, p, c in list(handler.log) if pg == page]
        out[page] = rec
    handler.page = None
    return out


def page_params():
    return PAGES or [None]  # no build: the server fixture fails and says so


@pytest.mark.parametrize("page", page_params())
def test_no_console_errors(visits, page):
    errors = [e["message"] for e in visits[page]["console"]
              if not any(re.search(rx, e["message"]) for rx, _why in CONSOLE_ALLOW)]
    assert not errors, "\n".join(errors[:10])


@pytest.mark.parametrize("page", page_params())
def test_no_failed_local_request(visits, page):
    failed = [f"{code} {path}" for path, code in visits[page]["requests"] if code >= 400]
    assert not failed, failed


@pytest.mark.parametrize("page", page_params())
def test_math_typeset(visits, page):
    rec = visits[page]
    if rec["math"]:
        assert rec["mathjax"], "the page has math but MathJax did not load"
        assert not rec.get("mathjaxError"), rec.get("mathjaxError")
        assert not rec["untypeset"], f"math left untypeset: {rec['untypeset']}"
    raw = [m.group(0) for m in RAW_TEX.finditer(rec["text"])]
    context = [rec["text"][max(0, m.start() - 40): m.end() + 40] for m in RAW_TEX.finditer(rec["text"])]
    assert not raw, f"raw TeX on the page: {context[:3]}"


@pytest.mark.parametrize("page", page_params())
def test_no_raw_markup(visits, page):
    text = visits[page]["text"]
    found = [text[max(0, m.start() - 40): m.end() + 40] for m in RAW_MYST.finditer(text)]
    assert not found, f"raw MyST/Markdown on the page: {found[:3]}"


@pytest.mark.parametrize("page", page_params())
def test_images_load_and_are_legible(visits, page):
    bad = []
    for im in visits[page]["images"]:
        if not im["complete"] or im["natural"] == 0:
            bad.append(f"not loaded: {im['src']}")
        elif im["visible"] and im["shown"] < MIN_SCALE * im["natural"] - 0.5:
            bad.append(f"shown at {im['shown'] / im['natural']:.0%} of {im['natural']} px: {im['src']}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("page", page_params())
def test_outputs_are_clean(visits, page):
    rec = visits[page]
    assert rec["stderr"] == 0, f"{rec['stderr']} stderr outputs on the page"
    found = list(dict.fromkeys(f"{why}: {o['text'][:120]!r}" for o in rec["outputs"]
                               for rx, why in GARBAGE if rx.search(o["text"])))
    assert not found, "\n".join(found[:5])


@pytest.mark.parametrize("page", page_params())
def test_code_outputs_and_equations_fit_the_column(visits, page):
    """At a 1280-px window no code cell, printed output or display equation scrolls sideways
    (1 px of slack)."""
    wide = visits[page]["wide"]
    assert not wide, f"{len(wide)} blocks scroll sideways; longest lines:\n" + "\n".join(wide[:10])


@pytest.mark.parametrize("page", page_params())
def test_static_page_chrome(visits, page):
    """No embedded widget state (sliders need a kernel), no empty header bar, one search field."""
    rec = visits[page]
    assert rec["widgetState"] == 0, "widget state embedded in the page"
    assert rec["header"] == 0, f"a {rec['header']:.0f}-px header bar above the page"
    assert rec["searchFields"] <= 1, f"{rec['searchFields']} search fields shown"


@pytest.mark.parametrize("page", page_params())
def test_solutions_fold_and_open(visits, page):
    assert not visits[page]["solutions"], visits[page]["solutions"]


def test_search_returns_results(server, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    httpd, handler = server
    driver.get(f"http://127.0.0.1:{httpd.server_address[1]}/search.html?q=diffusion")
    results = WebDriverWait(driver, 20).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results ul.search li"))
    assert len(results) >= 1


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        for key in ("href", "src"):
            if a.get(key) and (tag in ("a", "link") or key == "src"):
                self.hrefs.append(a[key])


@functools.lru_cache(maxsize=None)
def parse(path: Path) -> Links:
    links = Links()
    links.feed(path.read_text(encoding="utf-8", errors="replace"))
    return links


def test_every_local_link_and_anchor_resolves():
    assert PAGES, "no pages: build the book first"
    broken, n = [], 0
    for page in PAGES:
        for href in parse(HTML / page).hrefs:
            parts = urlsplit(href)
            if parts.scheme or parts.netloc or href.startswith(("mailto:", "javascript:", "data:")):
                continue
            n += 1
            target = (HTML / page).parent / unquote(parts.path) if parts.path else HTML / page
            target = target.resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page}: {href} (no file)")
            elif (parts.fragment and target.suffix == ".html"
                  and unquote(parts.fragment) not in parse(target).ids):
                broken.append(f"{page}: {href} (no anchor)")
    assert n > 0
    assert not broken, f"{len(broken)} of {n} local links broken:\n" + "\n".join(broken[:20])
