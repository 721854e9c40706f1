"""A Prefect server with its UI in a child process, for tests, scripts and demos.

``matloop ui`` runs the same command in the foreground. Here the server gets its own
``PREFECT_HOME`` (its SQLite database lives there), telemetry off, and the UI pointed at its
own port.

Examples
--------
>>> with LocalPrefectServer(home="/tmp/prefect-demo") as server:   # doctest: +SKIP
...     env = server.client_env()          # PREFECT_API_URL etc. for `matloop run`
...     print(server.ui_url)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(home: str | Path, port: int, host: str = "127.0.0.1") -> dict[str, str]:
    """Environment for ``prefect server start``: private home, no telemetry, UI → this port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_UI_API_URL=f"http://{host}:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
    )
    return env


class LocalPrefectServer:
    """``prefect server start`` on ``host:port`` until :meth:`stop` (or the ``with`` ends)."""

    def __init__(
        self, home: str | Path, port: int | None = None, host: str = "127.0.0.1",
        log_file: str | Path | None = None,
    ) -> None:
        self.home = Path(home)
        self.host = host
        self.port = port or free_port()
        self.log_file = Path(log_file) if log_file else self.home / "server.log"
        self.process: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client_env(self, **extra: str) -> dict[str, str]:
        """Environment for processes that talk to this server (``matloop``, workers)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_API_URL=self.api_url,
            PREFECT_HOME=str(self.home / "client"),
            DO_NOT_TRACK="1",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
        )
        env.update(extra)
        return env

    def start(self, timeout: float = 120.0) -> LocalPrefectServer:
        import httpx

        self.home.mkdir(parents=True, exist_ok=True)
        log = self.log_file.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", self.host,
             "--port", str(self.port)],
            env=server_env(self.home, self.port, self.host),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"prefect server exited ({self.process.returncode}); see {self.log_file}:\n"
                    + self.log_file.read_text()[-2000:]
                )
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"prefect server did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        """Stop the server and whatever it started (its own process group)."""
        if self.process is not None and self.process.poll() is None:
            group = os.getpgid(self.process.pid)
            os.killpg(group, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(group, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def __enter__(self) -> LocalPrefectServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
