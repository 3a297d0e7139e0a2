"""Starts `python app.py --demo` on a free loopback port for browser and API tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Debian's Chromium, driven headless by playwright in the browser tests (tests/conftest.py `browser`).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip


class AppServer:
    def __init__(self, data_dir: Path, demo_cache: Path, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir, self.demo_cache, self.extra_env = data_dir, demo_cache, extra_env or {}
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = data_dir.parent / f"app-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 90) -> AppServer:
        """Start the app and return once it answers HTTP and its checkpoints are loaded (the manager logs "Checkpoints
        ready"): a request before that gets "is loading; try again", correctly, but not what a test means to check."""
        env = {**os.environ, "KREA2_DATA_DIR": str(self.data_dir), "KREA2_DEMO_CHECKPOINTS": str(self.demo_cache),
               "GRADIO_ANALYTICS_ENABLED": "False", **self.extra_env}  # fmt: skip
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log, "ab")  # closed when the process ends
        log_start = log.tell()  # a restart appends to the same log: look only at this run's lines
        self.proc = subprocess.Popen(
            [sys.executable, "app.py", "--demo", "--port", str(self.port)], cwd=ROOT, env=env, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited early: {self.log.read_text()[-2000:]}")
            if self._answers() and b"Checkpoints ready" in self.log.read_bytes()[log_start:]:
                return self
            time.sleep(0.5)
        raise RuntimeError(f"app did not start: {self.log.read_text()[-2000:]}")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "config", timeout=2) as response:
                return response.status == 200
        except urllib.error.HTTPError as error:
            return error.code in (401, 403)  # up, behind auth
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
