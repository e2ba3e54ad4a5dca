"""Browser check of the web viewer: headless Chromium opens `mip360 view RUN` and takes a screenshot.

Starts the viewer on a run, opens its page in Debian's chromium (headless, software WebGL through
SwiftShader) via the DevTools protocol, waits for the model's frame to arrive and saves a screenshot
(default docs/viewer.png). It then checks that the rendered scene is there: the picture's center must
hold many distinct colours (an empty canvas or a blank page has a handful). Not a CI test: it needs
chromium (apt-get install chromium) and takes about a minute.

    python benchmarks/viewer_screenshot.py RUN [--out docs/viewer.png] [--wait 25]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


async def screenshot(devtools_port: int, url: str, wait: float, size: tuple[int, int]) -> bytes:
    import websockets

    targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{devtools_port}/json", timeout=10).read())
    page = next(t for t in targets if t.get("type") == "page")
    async with websockets.connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20) as ws:
        counter = 0

        async def call(method: str, **params):
            nonlocal counter
            counter += 1
            await ws.send(json.dumps({"id": counter, "method": method, "params": params}))
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("id") == counter:
                    return msg.get("result", {})

        await call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1,
                   mobile=False)
        await call("Page.enable")
        await call("Page.navigate", url=url)
        await asyncio.sleep(wait)
        shot = await call("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["data"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/viewer.png"))
    ap.add_argument("--wait", type=float, default=25.0, help="seconds between opening the page and the shot")
    ap.add_argument("--size", default="1280x800")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    port, devtools = free_port(), free_port()
    viewer = subprocess.Popen([sys.executable, "-m", "mip360cli", "view", str(args.run), "--port", str(port),
                               "--max-res", "640", "--device", "cpu"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    profile = tempfile.mkdtemp(prefix="mip360-chromium-")
    browser = None
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url, 60)
        browser = subprocess.Popen([args.chromium, "--headless=new", "--no-sandbox", "--disable-quic",
                                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                                    "--disable-sync", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                                    f"--remote-debugging-port={devtools}", f"--user-data-dir={profile}",
                                    f"--window-size={size[0]},{size[1]}", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{devtools}/json/version", 30)
        t0 = time.time()
        png = asyncio.run(screenshot(devtools, url, args.wait, size))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(png)
        img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        h, w = img.shape[:2]
        center = img[h // 4: 3 * h // 4, w // 3: 2 * w // 3]
        colours = len(np.unique(center.reshape(-1, 3) // 8, axis=0))
        ok = colours > 200
        print(f"screenshot {args.out} ({w}x{h}) after {time.time() - t0:.0f} s; distinct colours in the center: "
              f"{colours} -> {'the rendered scene is shown' if ok else 'EMPTY (no rendered scene)'}")
        print(f"chromium: {subprocess.run([args.chromium, '--version'], capture_output=True, text=True).stdout.strip()}"
              f"; date: {time.strftime('%Y-%m-%d')}")
        if not ok:
            sys.exit(1)
    finally:
        if browser is not None:
            browser.terminate()
            browser.wait(10)
        viewer.terminate()
        out, _ = viewer.communicate(timeout=20)
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
