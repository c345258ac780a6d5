"""llama-cpp-python's own OpenAI-compatible server, installed on demand outside the repository.

``python = ensure_peer_venv()`` returns the interpreter of a virtual environment holding the same
llama-cpp-python wheel as ``.venv`` (built once by ``scripts/build-llama-wheel.sh`` and cached, so
nothing compiles again) plus the server's extras. ``LlamaCppServer(python, port).start()`` runs
``python -m llama_cpp.server`` on the bundled GGUF.

The environment lives in ``$MODELHOST_PEER_VENV`` or ``${XDG_CACHE_HOME:-~/.cache}/modelhost/
peer-venv-<key>``, keyed by the wheel and the interpreter, and is built under a lock and marked
complete only at the end, so parallel test processes or a killed run never use a half-built one.

Prewarm (CI does it before pytest): ``python tests/support/peer_server.py install``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 900.0
_COMPLETE = ".complete"


class PeerUnavailable(RuntimeError):
    """The peer server cannot be installed here (no pip, no network, or the wheel build failed)."""


def _run(cmd: list[str], what: str, timeout: float = INSTALL_TIMEOUT) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise PeerUnavailable(f"{what} timed out after {timeout:.0f}s") from exc
    if out.returncode != 0:
        raise PeerUnavailable(f"{what} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return out.stdout


def llama_wheel(python: str = sys.executable) -> Path:
    """The cached llama-cpp-python wheel for `python` (built the first time, as install.sh does)."""
    stdout = _run(["bash", str(REPO / "scripts" / "build-llama-wheel.sh"), python], "building the llama-cpp-python wheel")
    return Path(stdout.strip().splitlines()[-1])


def venv_dir(wheel: Path) -> Path:
    override = os.environ.get("MODELHOST_PEER_VENV")
    if override:
        return Path(override).expanduser()
    key = hashlib.sha256(f"{wheel.name}|{wheel.stat().st_size}|{sys.version}|server".encode()).hexdigest()[:12]
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelhost" / f"peer-venv-{key}"


def ensure_peer_venv() -> Path:
    """The peer environment's Python, installing it first when it is missing; raises `PeerUnavailable`."""
    wheel = llama_wheel()
    target = venv_dir(wheel)
    python = target / "bin" / "python"
    if (target / _COMPLETE).exists():
        return python
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / _COMPLETE).exists():
            return python
        shutil.rmtree(target, ignore_errors=True)  # a run that was killed half-way
        # Same interpreter as the tests, so the cached wheel (keyed by Python version) fits.
        _run([sys.executable, "-m", "venv", str(target)], "creating the peer venv")
        pip = [str(python), "-m", "pip", "install", "--quiet", "--no-input", "--disable-pip-version-check"]
        # The wheel with its own `server` extra (fastapi, uvicorn, sse-starlette, ...), as its metadata pins them.
        _run([*pip, f"{wheel}[server]"], "installing llama-cpp-python[server]")
        _run([str(python), "-c", "import llama_cpp.server.app"], "importing llama_cpp.server")
        (target / _COMPLETE).write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return python


@dataclass
class LlamaCppServer:
    """``LlamaCppServer(python, port, model_path, alias).start()``: one model, one request at a time."""

    python: Path
    port: int
    model_path: Path
    alias: str
    log_path: Path
    api_key: str | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 90.0) -> LlamaCppServer:
        cmd = [
            str(self.python), "-m", "llama_cpp.server",
            "--model", str(self.model_path), "--model_alias", self.alias,
            "--n_ctx", "2048", "--n_threads", "1", "--host", "127.0.0.1", "--port", str(self.port),
            # A new request must not interrupt a running stream (its default): requests queue instead.
            "--interrupt_requests", "False",
        ]
        if self.api_key:
            cmd += ["--api_key", self.api_key]
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/models", headers=headers, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not answer in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: peer_server.py install")
    print(ensure_peer_venv())
