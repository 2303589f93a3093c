"""Console benchmark (issue 20): time from a report's receipt to its alert drawn in a real browser
(p50/p99) under a steady load, and the time to the first map render.

Usage: .venv/bin/python bench/console.py [--bin target/release/vigie] [--rate 10000]
                                         [--drones 2000] [--reports-per-drone 100] [--loads 5]
Starts `vigie serve` (WAL fsync, console on port 0, open mode) in a temp dir and Debian's chromium
(Playwright, the test suite's flags), all on this machine: one clock for the server's `raised_at`
(the receipt of the report) and the browser's `performance` marks. The console marks
`vigie:map-drawn` the first time it has drawn the drones and `vigie:alert-drawn` in the animation
frame that draws each live alert (console/web/app.js). `vigie simulate --measure-alerts` runs the
load and measures the gRPC subscriber's latency in the same run, for comparison.
Writes Markdown to stdout.
"""

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage"]


def start_server(binary, data):
    proc = subprocess.Popen(
        [binary, "serve", "--data-dir", str(data), "--grpc-addr", "127.0.0.1:0",
         "--console-addr", "127.0.0.1:0", "--wal", "fsync"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    addr = console = None
    while console is None:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("vigie serve exited at start")
        if line.startswith("listening on "):
            addr = line.split()[2]
        if line.startswith("console on "):
            console = line.split()[2]
    return proc, addr, console


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def simulate(binary, addr, *args):
    return subprocess.run([binary, "simulate", "--target", addr, *args], check=True,
                          capture_output=True, text=True).stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "vigie"))
    ap.add_argument("--rate", type=float, default=10000)
    ap.add_argument("--drones", type=int, default=2000)
    ap.add_argument("--reports-per-drone", type=int, default=100)
    ap.add_argument("--loads", type=int, default=5, help="page loads for the first-render time")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        proc, addr, console = start_server(args.bin, Path(tmp) / "data")
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            # A fleet's last minutes, so that the map has every drone to draw.
            simulate(args.bin, addr, "--drones", str(args.drones), "--reports-per-drone", "5",
                     "--seed", "3")
            renders, loaded = [], []
            for _ in range(args.loads):
                ctx = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
                page = ctx.new_page()
                page.goto(console)
                page.wait_for_selector("body[data-ready=true]", timeout=60000)
                page.wait_for_function(
                    "performance.getEntriesByName('vigie:map-drawn').length > 0", timeout=60000)
                renders.append(page.evaluate(
                    "performance.getEntriesByName('vigie:map-drawn')[0].startTime"))
                loaded.append(page.evaluate(
                    "performance.getEntriesByType('navigation')[0].loadEventEnd"))
                markers = page.locator("[data-drone]").count()
                ctx.close()

            ctx = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
            page = ctx.new_page()
            page.goto(console)
            page.wait_for_selector("body[data-ready=true]", timeout=60000)
            time.sleep(1)
            began = time.time()
            out = simulate(args.bin, addr, "--drones", str(args.drones), "--reports-per-drone",
                           str(args.reports_per_drone), "--rate", str(args.rate), "--seed", "2",
                           "--first-drone", "100000", "--batch", "100", "--measure-alerts")
            elapsed = time.time() - began
            time.sleep(2)
            marks = page.evaluate(
                "performance.getEntriesByName('vigie:alert-drawn').map(m => "
                "({ at: performance.timeOrigin + m.startTime, raised: m.detail.raised_at }))")
            ctx.close()
        finally:
            browser.close()
            proc.terminate()
            proc.wait()
    latencies = [m["at"] - datetime.fromisoformat(m["raised"]).timestamp() * 1000 for m in marks]
    reports = args.drones * args.reports_per_drone
    print(f"- load: {reports:,} reports over {elapsed:.1f} s ({reports / elapsed:,.0f} reports/s "
          f"asked {args.rate:,.0f}), {len(latencies):,} alerts drawn")
    print(f"- receipt → alert drawn in the browser: p50 **{percentile(latencies, 50):.1f} ms**, "
          f"p99 **{percentile(latencies, 99):.1f} ms**, max {max(latencies):.1f} ms")
    for line in out.splitlines():
        if "alert" in line and "p50" in line:
            print(f"- same run, gRPC subscriber (`vigie simulate --measure-alerts`): {line.strip()}")
    print(f"- first map render ({markers:,} drones, {args.loads} page loads): median "
          f"**{statistics.median(renders):.0f} ms** after navigation start (min {min(renders):.0f}, "
          f"max {max(renders):.0f}); load event at {statistics.median(loaded):.0f} ms")


if __name__ == "__main__":
    os.environ.setdefault("PLAYWRIGHT_BROWSERS_PATH", "0")
    main()
