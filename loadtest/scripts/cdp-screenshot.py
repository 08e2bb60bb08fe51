#!/usr/bin/env python3
"""Screenshot of a page after it has run for a while in real time.

    cdp-screenshot.py URL OUT.png [SECONDS] [WIDTHxHEIGHT]

Headless Chromium's own --screenshot runs the page on virtual time, where
two polls of the daemon's page come milliseconds apart and its rates read
zero; this drives the browser over the DevTools pipe instead (commands on
its fd 3, answers on its fd 4, each JSON ended by a NUL byte), lets the page
run SECONDS of real time, then captures it. Standard library only.
"""
import base64
import json
import os
import subprocess
import sys
import tempfile
import time

url, out = sys.argv[1], sys.argv[2]
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 8
width, height = (int(v) for v in (sys.argv[4] if len(sys.argv) > 4 else "1100x1500").split("x"))

profile = tempfile.mkdtemp()
browser = subprocess.Popen(
    ["sh", "-c", 'exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>&2', "chromium",
     "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
     "--disable-background-networking", "--disable-component-update", "--no-pings",
     "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
     "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
next_id = 0


def call(method, params=None, session=None):
    global next_id
    next_id += 1
    message = {"id": next_id, "method": method, "params": params or {}}
    if session:
        message["sessionId"] = session
    browser.stdin.write(json.dumps(message).encode() + b"\0")
    browser.stdin.flush()
    while True:
        raw = b""
        while not raw.endswith(b"\0"):
            byte = browser.stdout.read(1)
            if not byte:
                sys.exit("chromium closed its pipe")
            raw += byte
        answer = json.loads(raw[:-1])
        if answer.get("id") == next_id:
            if "error" in answer:
                sys.exit(f"{method}: {answer['error']}")
            return answer["result"]


try:
    target = call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    call("Emulation.setDeviceMetricsOverride",
         {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
    call("Page.navigate", {"url": url}, session)
    time.sleep(seconds)
    shot = call("Page.captureScreenshot", {"format": "png"}, session)
    with open(out, "wb") as file:
        file.write(base64.b64decode(shot["data"]))
finally:
    browser.kill()
    browser.wait()
