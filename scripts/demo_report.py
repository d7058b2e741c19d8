"""Write `make demo`'s report alone: the demo's paragraph read by the logit lens and a
tuned lens on the embedded SmolLM2-135M, as `demos/demo.py` writes it in its last step.

    .venv/bin/python scripts/demo_report.py [--lens demo-output/lens]
        [--output demo-output/report.html] [--screenshot 1280x800 ...]

Uses the lens `make demo` saved if there is one, else an identity-initialised
`TunedLens.from_model` (the same figures and the same file size, untrained values).
`--screenshot WxH` also saves `report-W.png` beside the report: the first screen in
headless Chromium (Playwright driving Debian's `chromium`, as the tests do).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

from hooklens import TunedLens, models
from hooklens.report import trajectory_report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "demos"))
from demo import PARAGRAPH  # noqa: E402  (the demo's own text, not a copy)


def screenshot(report: Path, size: str, png: Path) -> None:
    from playwright.sync_api import sync_playwright

    width, height = (int(n) for n in size.lower().split("x"))
    executable = shutil.which("chromium")
    if executable is None:
        raise SystemExit("chromium is not installed (scripts/install-browser.sh installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(report.resolve().as_uri())
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length")
        page.wait_for_timeout(1500)
        page.screenshot(path=str(png))
        browser.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lens", default="demo-output/lens", help="a saved TunedLens")
    parser.add_argument("--output", default="demo-output/report.html")
    parser.add_argument("--screenshot", nargs="*", default=[], metavar="WxH")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model = models.load(models.DEFAULT_MODEL)
    if (Path(args.lens) / "config.json").is_file():
        lens, which = TunedLens.load(args.lens, model=model), args.lens
    else:
        lens, which = TunedLens.from_model(model), "an identity TunedLens.from_model"
    with torch.no_grad():
        path = trajectory_report(model, PARAGRAPH, {"tuned lens": lens}, args.output)
    size = path.stat().st_size
    print(
        f"wrote {path} with {which}: {size:,} bytes ({size / 1e6:.2f} MB, "
        f"{size / 2**20:.2f} MiB) in {time.perf_counter() - start:.1f}s"
    )
    for size_text in args.screenshot:
        png = path.with_name(f"report-{size_text.lower().split('x')[0]}.png")
        screenshot(path, size_text, png)
        print(f"screenshot {size_text}: {png}")


if __name__ == "__main__":
    main()
