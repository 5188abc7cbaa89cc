"""Render a local HTML file in headless Chromium and report what a person's browser would complain about.

Talks the DevTools protocol over `--remote-debugging-pipe` (JSON messages ending in a NUL byte, commands
on the browser's fd 3, replies and events on its fd 4): no port, no extra package, and the console
messages arrive as structured events instead of log lines whose format changes between versions.
What counts as a problem: a console.error / console.assert call, an uncaught exception, an error-level
browser log entry (a failed resource load, a Content-Security-Policy violation), a failed network load,
and a navigation that itself failed."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe")


@dataclass
class PageCheck:
    console_errors: list[str] = field(default_factory=list)
    failed_loads: list[str] = field(default_factory=list)
    screenshot: bytes = b""


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class _Pipe:
    """One DevTools connection: send commands, read replies, keep every event seen on the way."""

    def __init__(self, write_fd: int, read_fd: int, deadline: float) -> None:
        self.write_fd, self.read_fd, self.deadline = write_fd, read_fd, deadline
        self.buffer, self.events, self.next_id = b"", [], 0

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.read()
            if reply is None:
                raise TimeoutError(f"chromium did not answer {method}")
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def read(self, until: float | None = None) -> dict | None:
        """The next message (events are also kept in self.events), or None at the deadline."""
        until = min(until or self.deadline, self.deadline)
        while b"\0" not in self.buffer:
            ready, _, _ = select.select([self.read_fd], [], [], max(0.0, until - time.monotonic()))
            if not ready:
                return None
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe (it crashed or exited)")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self.events.append(message)
        return message

    def wait_for(self, method: str) -> bool:
        if any(e["method"] == method for e in self.events):
            return True
        while (message := self.read()) is not None:
            if message.get("method") == method:
                return True
        return False

    def drain(self, seconds: float) -> None:
        """Keep reading for a moment: late errors (after the load event) still count."""
        until = time.monotonic() + seconds
        while self.read(until) is not None:
            pass


def _launch(chromium: str, profile: str):
    """Start chromium with our pipe ends as its fds 3 (commands in) and 4 (messages out)."""
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def wire_fds():  # in the child before exec: move the ends above 10 first, so dup2 never clobbers one
        high_r, high_w = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.dup2(high_r, 3)
        os.dup2(high_w, 4)

    proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            close_fds=False, preexec_fn=wire_fds)  # noqa: PLW1509 (the test starts no threads)
    os.close(to_browser_r)
    os.close(from_browser_w)
    return proc, to_browser_w, from_browser_r


def check_page(page: Path, *, chromium: str | None = None, width: int = 1200, timeout: float = 60.0) -> PageCheck:
    """Load ``page`` (a local file), wait for its load event, and return the problems and a full-page PNG."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("chromium is not on PATH: run scripts/setup-browser.sh (`make test-browser` does)")
    with tempfile.TemporaryDirectory(prefix="converge-chromium-") as profile:
        proc, write_fd, read_fd = _launch(chromium, profile)
        try:
            pipe = _Pipe(write_fd, read_fd, time.monotonic() + timeout)
            result = _visit(pipe, Path(page).resolve().as_uri(), width)
            try:
                pipe.call("Browser.close")
            except (RuntimeError, TimeoutError):
                pass  # closing raced with the browser exiting; the process is ended below either way
            return result
        finally:
            for fd in (write_fd, read_fd):
                os.close(fd)
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)


def _visit(pipe: _Pipe, url: str, width: int) -> PageCheck:
    target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        pipe.call(f"{domain}.enable", session=session)
    pipe.call("Emulation.setDeviceMetricsOverride",
              {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
    result = PageCheck()
    navigation = pipe.call("Page.navigate", {"url": url}, session=session)
    if navigation.get("errorText"):
        result.failed_loads.append(f"{url}: {navigation['errorText']}")
    if not pipe.wait_for("Page.loadEventFired"):
        result.failed_loads.append(f"{url}: no load event")
    pipe.drain(0.5)
    size = pipe.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
    shot = pipe.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": {
        "x": 0, "y": 0, "width": width, "height": min(size["height"], 16000), "scale": 1}}, session=session)
    result.screenshot = base64.b64decode(shot["data"])
    _collect(pipe.events, session, result)
    return result


def _collect(events: list[dict], session: str, result: PageCheck) -> None:
    urls = {}
    for event in events:
        if event.get("sessionId") != session:
            continue
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            result.console_errors.append(f"console.{params['type']}: {args}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            result.console_errors.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            result.console_errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            urls[params.get("requestId")] = params.get("request", {}).get("url", "")
        elif method == "Network.loadingFailed":
            url = urls.get(params.get("requestId"), "?")
            result.failed_loads.append(f"{url[:120]}: {params.get('errorText') or params.get('blockedReason')}")
