"""Open the HTML report in headless Chromium from file:// and check that every image loads and nothing logs an error.

A copy of the report gets a probe script at the top of its ``<head>``,
before the Content-Security-Policy tag, so the policy does not block it. On
the load event the probe writes the image and error counts into the DOM,
and ``--dump-dom`` prints that DOM. Chromium's own console log
(``--enable-logging=stderr``) is checked as well.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from test_report import BOTTLE, train_tiny

from defectscope.report.html import ReportOptions, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install chromium)"),
    pytest.mark.skipif(not BOTTLE.is_dir(), reason=f"MVTec AD bottle not found at {BOTTLE}"),
]

PROBE = """<script>
window.probeErrors = [];
window.addEventListener("error", (event) => {
  window.probeErrors.push(event.message || ("failed to load " + (event.target && (event.target.alt || event.target.tagName))));
}, true);
document.addEventListener("securitypolicyviolation", (event) => {
  window.probeErrors.push("CSP blocked " + event.blockedURI + " (" + event.violatedDirective + ")");
});
const originalError = console.error;
console.error = (...parts) => { window.probeErrors.push(parts.join(" ")); originalError(...parts); };
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter((image) => !(image.complete && image.naturalWidth > 0)).map((image) => image.alt);
  const result = document.createElement("pre");
  result.id = "probe-result";
  result.textContent = JSON.stringify({
    images: images.length, broken: broken, svgs: document.querySelectorAll("svg").length, errors: window.probeErrors,
  });
  document.body.appendChild(result);
});
</script>"""


def open_in_chromium(html_path, profile_dir) -> tuple[dict, str]:
    """Load ``html_path`` from file:// and return the probe's result and Chromium's stderr."""
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile_dir}", "--enable-logging=stderr", "--v=0",
        "--virtual-time-budget=5000", "--dump-dom", html_path.resolve().as_uri(),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="probe-result">(.*?)</pre>', completed.stdout, re.S)
    assert match is not None, f"probe result missing from the dumped DOM; chromium stderr:\n{completed.stderr[-2000:]}"
    text = match.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return json.loads(text), completed.stderr


@pytest.fixture(scope="module")
def probed_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser")
    run = train_tiny(folder / "run")
    report = write_report(run.evaluation, run.metadata, folder / "report.html", options=ReportOptions(gallery_size=3))

    html = report.read_text(encoding="utf-8")
    assert html.count("<head>") == 1
    probed = folder / "probed.html"
    probed.write_text(html.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    return open_in_chromium(probed, folder / "profile")


def test_browser_loads_every_image(probed_report):
    result, _ = probed_report
    assert result["images"] >= 4
    assert result["broken"] == []


def test_browser_draws_svg_charts(probed_report):
    result, _ = probed_report
    # Image ROC, image PR, pixel ROC, pixel PR and the score histogram.
    assert result["svgs"] == 5


def test_browser_page_logs_no_errors(probed_report):
    result, _ = probed_report
    assert result["errors"] == []


def test_browser_console_is_clean(probed_report):
    _, stderr = probed_report
    console_lines = [line for line in stderr.splitlines() if "CONSOLE" in line]
    assert console_lines == []
