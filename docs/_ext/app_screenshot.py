"""Take the docs' screenshot of the browser demo (docs/_static/app.png) with Debian's headless chromium.

    python docs/_ext/app_screenshot.py --model cosegkit-demo/lcco --model cosegkit-demo/baseline \\
        --pick cosegkit-demo/lcco --example 1 --out docs/_static/app.png

Serves ``cosegkit app``'s page for the models given (as ``cosegkit app --model ...`` does), picks
``--pick`` in the model list, clicks example set ``--example`` (the demo's synthetic world),
presses Segment, waits for the result and saves the page as a palette PNG. Nothing is fetched
from the network; a request that leaves the machine stops the script.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from PIL import Image

from cosegkit.testing import CHROMIUM_ARGS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="a run folder for the model list (repeat)")
    parser.add_argument("--pick", required=True, help="the model list's entry to select")
    parser.add_argument("--example", type=int, default=1, help="the example set to click, from 1")
    parser.add_argument("--out", default="docs/_static/app.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=860)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from cosegkit.app import build_app, example_sets, launch_app, model_choices
    from cosegkit.engine.pretrain import cache_folder

    choices = model_choices(args.model)
    if args.pick not in choices:
        parser.error(f"--pick {args.pick!r} is not in the model list: {list(choices)}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page_app = build_app(choices, examples=example_sets(cache_folder() / "app-examples"))
    launch_app(page_app, port=port, block=False)
    outside: list[str] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})

            def offline(route) -> None:
                if route.request.url.startswith(("http://127.0.0.1", "data:", "blob:")):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", offline)
            page.goto(f"http://127.0.0.1:{port}", wait_until="networkidle")
            page.click("#model input")
            page.get_by_role("option", name=args.pick, exact=True).click()
            page.locator(".gallery-item, button.gallery-item, [data-testid='examples'] button").nth(
                args.example - 1
            ).click()
            page.wait_for_function(f"document.querySelector('#photos').textContent.includes('set{args.example}-')")
            page.click("#segment")
            page.wait_for_selector("#archive a", timeout=120_000)
            page.wait_for_timeout(1500)  # the gallery's images drawn
            page.screenshot(path=args.out, full_page=False)
            browser.close()
    finally:
        page_app.close()
    if outside:
        print(f"requests left the machine: {outside}", file=sys.stderr)
        return 1
    Image.open(args.out).convert("RGB").quantize(colors=128).save(args.out, optimize=True)
    print(f"{args.out}: {Path(args.out).stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
