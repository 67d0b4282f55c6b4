"""The page's time from upload to rendered result, in a real browser (headless Chromium driven by Playwright).

    python benchmarks/app_latency.py --photo group.jpg [--repeats 5] [--screenshot docs/app_screenshot.png]

Starts app.py's page on a free local port, then per repeat: loads the page, uploads the photo, clicks Analyze
and waits (the clock running from the upload on) until the page says how many faces it found and shows the
annotated image. Prints each time and the median; the first repeat includes loading the model. --screenshot
saves the page after the last repeat.
"""
import argparse
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import app  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photo", required=True)
    p.add_argument("--ckpt", default=str(app.DEFAULT_MODEL))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--screenshot", help="save a screenshot of the page with its results here")
    args = p.parse_args(argv)
    from playwright.sync_api import expect, sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page_app = app.build_page(args.ckpt)
    page_app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, css=app.CSS, quiet=True)
    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        for _ in range(args.repeats):
            page.goto(f"http://127.0.0.1:{port}/")
            start = time.perf_counter()
            page.locator("#photos input[type=file]").set_input_files(args.photo)
            page.locator("#analyze").click()
            expect(page.locator("#message")).to_contain_text("face(s) in", timeout=60_000)
            expect(page.locator("#annotated img").first).to_be_visible()
            times.append(time.perf_counter() - start)
            print(f"upload to rendered result: {times[-1]:.3f} s", flush=True)
        if args.screenshot:
            page.screenshot(path=args.screenshot, full_page=True)
        browser.close()
    page_app.close()
    print(f"median over {len(times)} (the first includes loading the model): {statistics.median(times):.3f} s; "
          f"median without the first: {statistics.median(times[1:] or times):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
