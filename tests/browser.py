"""Open an HTML file in headless Chromium with the network cut off, and report back.

A probe script is injected at the top of a copy of the page: it records uncaught
errors, failed resource loads, `console.error` calls and every non-file URL the page
fetched, then writes them into the DOM, which `--dump-dom` returns.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # No network: every request goes to a closed local port and no name resolves.
    "--proxy-server=127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--virtual-time-budget=15000",
]

PROBE = """<script>
window.__problems = [];
window.addEventListener("error", function (e) {
  var what = e.message || (e.target && (e.target.src || e.target.href)) || "unknown";
  window.__problems.push("error: " + what);
}, true);
var originalError = console.error;
console.error = function () {
  window.__problems.push("console.error: " + Array.prototype.join.call(arguments, " "));
  originalError.apply(console, arguments);
};
window.addEventListener("load", function () {
  setTimeout(function () {
    var fetched = performance.getEntriesByType("resource").map(function (r) { return r.name; })
      .filter(function (n) { return !/^(file|data|blob):/.test(n); });
    var out = document.createElement("pre");
    out.id = "page-probe";
    out.textContent = JSON.stringify({problems: window.__problems, network: fetched});
    document.body.appendChild(out);
  }, 1500);
});
</script>"""


@dataclass
class PageReport:
    dom: str
    problems: list[str]
    network: list[str]
    screenshot: Path


def chromium() -> str:
    """Path of the browser, or skip (fail under CI, where `make test` installs it)."""
    path = shutil.which("chromium")
    if path is None:
        message = "chromium is not installed (scripts/install-browser.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def open_page(page: Path, workdir: Path, size: str = "1400,2000") -> PageReport:
    browser = chromium()
    probed = workdir / f"probed-{page.name}"
    text = page.read_text(encoding="utf-8")
    head = re.search(r"<head[^>]*>", text)
    at = head.end() if head else 0
    probed.write_text(text[:at] + PROBE + text[at:], encoding="utf-8")
    common = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={workdir / 'profile'}"]
    url = probed.resolve().as_uri()
    dom = subprocess.run(
        [*common, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=True
    ).stdout
    screenshot = workdir / f"{page.stem}.png"
    subprocess.run(
        [*common, f"--window-size={size}", f"--screenshot={screenshot}", url],
        capture_output=True,
        timeout=180,
        check=True,
    )
    found = re.search(r'<pre id="page-probe">(.*?)</pre>', dom, flags=re.DOTALL)
    if found is None:
        raise AssertionError("the probe never reported: the page did not finish loading")
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    return PageReport(dom, probe["problems"], probe["network"], screenshot)
