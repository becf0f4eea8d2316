"""Make docs/report.png, the README's picture of `cai report`: render the report of a run root, open it in
headless Chromium (tests/report_browser.py), screenshot the top of the page, and save it as a 256-colour PNG.

    .venv/bin/python docs/report_screenshot.py runs/loop [--out docs/report.png] [--height 1700] [--scroll-to training] [--offset -900]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]


def main() -> None:
    from PIL import Image
    from report_browser import Browser, find_browser

    from report.render import write_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=HERE / "report.png")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=1700)
    parser.add_argument("--scroll-to", default=None, help="id of the section to start the picture at")
    parser.add_argument("--offset", type=int, default=0, help="pixels to move the picture's top by (negative: up)")
    parser.add_argument("--max-examples", type=int, default=3)
    args = parser.parse_args()
    browser = find_browser()
    if browser is None:
        sys.exit("no Chromium found (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        page_file, shot = Path(tmp) / "report.html", Path(tmp) / "shot.png"
        write_report(args.roots, page_file, max_examples=args.max_examples)
        with Browser(browser, width=args.width, height=args.height) as b:
            page = b.open(page_file.as_uri())
            if page.console_errors():
                sys.exit(f"console errors: {page.console_errors()}")
            top = args.offset
            if args.scroll_to:
                top = page.evaluate(f"document.getElementById({args.scroll_to!r}).getBoundingClientRect().top + window.scrollY - 8") + args.offset
            data = b.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                     "clip": {"x": 0, "y": top, "width": args.width, "height": args.height, "scale": 1}},
                          session=page.session)["data"]
        import base64

        shot.write_bytes(base64.b64decode(data))
        Image.open(shot).convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(args.out, optimize=True)
    print(f"{args.out}: {args.out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
