"""Install other client SDKs on demand (cached outside the repo) and run the
client programs in this directory against a running server.

Every program reads MODELHOST_BASE_URL, MODELHOST_API_KEY, MODELHOST_ORG and
MODELHOST_MODEL, makes its calls and prints ONE JSON object on stdout; the
``run_*`` functions return that object parsed.

Cache: ``$MODELHOST_TEST_CLIENTS_CACHE`` or else
``${XDG_CACHE_HOME:-~/.cache}/modelhost/test-clients``. Each SDK goes in a
directory named after its pinned version, so it is installed once and then
reused by every run and every clone of the repo. Installs are atomic (into a
temporary sibling, renamed when complete) and serialised with a lock file, so
parallel test processes or a killed run never leave a half-installed SDK.

``timeout`` in the ``run_*`` functions bounds the program run only; a first
install has its own INSTALL_TIMEOUT. To force a reinstall, delete the SDK's
directory in the cache.

Errors: :class:`ClientUnavailable` when a toolchain is missing (the test should
skip with its message); :class:`ClientInstallError` when an install fails
(:func:`registry_reachable` tells a test whether that was the network);
:class:`ClientError` when a program fails, times out or prints no JSON. Each
message carries the tail of the program's stderr.

Prewarm the cache (e.g. from ``.ci/run``, before pytest starts a server)::

    python tests/clients/runner.py install
"""
from __future__ import annotations

import fcntl
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

CLIENTS_DIR = Path(__file__).resolve().parent

# Pinned SDK versions: the cache directories are keyed by these.
PY_LEGACY_OPENAI = "0.28.1"
NODE_OPENAI_V3 = "3.3.0"
# `npm install openai` on 2026-11-25 gave 7.57.0, which declares node>=22.
# It was checked working on node 20.20 (the image's node) against the fake server.
NODE_OPENAI_CURRENT = "7.57.0"
# The Vercel AI SDK, `npm install ai @ai-sdk/openai zod` on 2026-12-01. Both declare node>=22;
# they were checked working on node 20.20 against modelhost's Responses API.
NODE_AI = "7.0.173"
NODE_AI_OPENAI = "4.0.118"
NODE_ZOD = "4.6.7"  # the AI SDK's peer dependency (schemas)
# The OpenAI Agents SDK, `pip install openai-agents` on 2026-12-01 (requires openai>=3,<4).
PY_OPENAI_AGENTS = "0.24.0"

# Each Node install: its cache directory name -> the npm packages in it, pinned.
NODE_INSTALLS: dict[str, dict[str, str]] = {
    f"node-openai-{NODE_OPENAI_V3}": {"openai": NODE_OPENAI_V3},
    f"node-openai-{NODE_OPENAI_CURRENT}": {"openai": NODE_OPENAI_CURRENT},
    f"node-ai-{NODE_AI}-openai-{NODE_AI_OPENAI}-zod-{NODE_ZOD}": {
        "ai": NODE_AI, "@ai-sdk/openai": NODE_AI_OPENAI, "zod": NODE_ZOD,
    },
}
_NODE_OPENAI_V3_DIR, _NODE_OPENAI_CURRENT_DIR, _NODE_AI_DIR = NODE_INSTALLS

# Which install each Node program runs under.
NODE_SCRIPTS: dict[str, str] = {
    "node_v3.js": _NODE_OPENAI_V3_DIR,
    "node_current.mjs": _NODE_OPENAI_CURRENT_DIR,
    "node_embeddings.mjs": _NODE_OPENAI_CURRENT_DIR,
    "node_generation_features.mjs": _NODE_OPENAI_CURRENT_DIR,
    "node_responses.mjs": _NODE_OPENAI_CURRENT_DIR,
    "node_batches.mjs": _NODE_OPENAI_CURRENT_DIR,
    "node_ai_sdk.mjs": _NODE_AI_DIR,
}

REQUIRED_ENV = ("MODELHOST_BASE_URL", "MODELHOST_API_KEY", "MODELHOST_ORG", "MODELHOST_MODEL")
INSTALL_TIMEOUT = 600.0  # seconds; a cold npm/pip install, not the program run
_TAIL = 4000  # characters of stderr/stdout kept in error messages


class ClientError(RuntimeError):
    """A client program failed, timed out, or did not print one JSON object."""


class ClientInstallError(ClientError):
    """Installing a client SDK into the cache failed."""


class ClientUnavailable(RuntimeError):
    """A toolchain the client needs (node/npm, php+curl, pip) is missing."""


def cache_root() -> Path:
    """The cache directory (not created here)."""
    override = os.environ.get("MODELHOST_TEST_CLIENTS_CACHE")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelhost" / "test-clients"


# --- availability -------------------------------------------------------------------


def node_available() -> bool:
    """True when both ``node`` and ``npm`` are on PATH."""
    return shutil.which("node") is not None and shutil.which("npm") is not None


@functools.lru_cache(maxsize=1)
def php_available() -> bool:
    """True when ``php`` is on PATH and has the curl extension loaded."""
    return _php_problem() is None


def _php_problem() -> str | None:
    php = shutil.which("php")
    if php is None:
        return "php is not installed (Debian: apt-get install php-cli php-curl)"
    probe = subprocess.run([php, "-r", 'exit(extension_loaded("curl") ? 0 : 3);'],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    if probe.returncode != 0:
        return ("php has no curl extension (Debian: apt-get install php-curl): "
                f"{probe.stderr[-500:]}")
    return None


# --- cached installs ----------------------------------------------------------------


def _tail(text: str | bytes | None) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):  # TimeoutExpired may carry bytes even with text=True
        text = text.decode("utf-8", "replace")
    return text[-_TAIL:]


def _cached_install(name: str, populate: Callable[[Path], None],
                    check: Callable[[Path], str | None]) -> Path:
    """Return ``cache_root()/name``, creating it with ``populate(tmpdir)`` first if absent.

    ``check(tmpdir)`` returns an error string when the install is unusable. The
    rename makes the directory appear complete or not at all; the lock keeps
    concurrent callers from installing the same thing twice.
    """
    root = cache_root()
    final = root / name
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if final.is_dir():  # another process installed it while we waited
            return final
        # Leftovers of an install that was killed; safe to drop while we hold the lock.
        for stale in root.glob(f".{name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        try:
            populate(tmp)
            problem = check(tmp)
            if problem:
                raise ClientInstallError(f"install of {name} is unusable: {problem}")
            tmp.chmod(0o755)  # mkdtemp made it 0700; the cache may be shared read-only
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _run_install(cmd: Sequence[str], what: str) -> None:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise ClientInstallError(f"installing {what} timed out after {INSTALL_TIMEOUT:.0f}s: "
                                 f"{' '.join(cmd)}\nstderr:\n{_tail(exc.stderr)}") from None
    if proc.returncode != 0:
        raise ClientInstallError(f"installing {what} failed (exit {proc.returncode}): "
                                 f"{' '.join(cmd)}\nstderr:\n{_tail(proc.stderr)}\n"
                                 f"stdout:\n{_tail(proc.stdout)}")


def registry_reachable(tool: str, timeout: float = 30.0) -> bool:
    """True when ``tool``'s package registry ("npm" or "pip") answers a look-up of a known package.

    Tests call this after a failed install: an unreachable registry is a reason to skip, any
    other install failure is a failure.
    """
    if tool == "npm":
        cmd = ["npm", "view", "openai", "version", "--loglevel=error"]
    elif tool == "pip":
        cmd = [sys.executable, "-m", "pip", "index", "versions", "--no-input",
               "--disable-pip-version-check", "openai-agents"]
    else:
        raise ValueError(f"unknown package tool {tool!r}; known: npm, pip")
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _pip_target_install(name: str, requirement: str, dist_info: str) -> Path:
    """``pip install --target`` of ``requirement`` (+ deps) into the cache dir ``name``; return it."""
    def populate(tmp: Path) -> None:
        probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True,
                               text=True, stdin=subprocess.DEVNULL)
        if probe.returncode != 0:
            raise ClientUnavailable(f"pip is not available for {sys.executable}: "
                                    f"{_tail(probe.stderr)}")
        _run_install([sys.executable, "-m", "pip", "install", "--quiet", "--no-input",
                      "--disable-pip-version-check", "--target", str(tmp), requirement], requirement)

    def check(tmp: Path) -> str | None:
        return None if (tmp / dist_info).is_dir() else f"no {dist_info} in {tmp}"

    return _cached_install(name, populate, check)


def legacy_python_dir() -> str:
    """Cache directory name for openai==PY_LEGACY_OPENAI under this interpreter.

    Keyed by the interpreter too: aiohttp and friends ship compiled wheels.
    """
    return f"py-openai-{PY_LEGACY_OPENAI}-{sys.implementation.cache_tag}"


def ensure_legacy_python() -> Path:
    """Install openai==PY_LEGACY_OPENAI (+ deps) with pip --target; return that dir."""
    return _pip_target_install(legacy_python_dir(), f"openai=={PY_LEGACY_OPENAI}",
                               f"openai-{PY_LEGACY_OPENAI}.dist-info")


def agents_python_dir() -> str:
    """Cache directory name for openai-agents==PY_OPENAI_AGENTS under this interpreter."""
    return f"py-openai-agents-{PY_OPENAI_AGENTS}-{sys.implementation.cache_tag}"


def ensure_agents_python() -> Path:
    """Install openai-agents==PY_OPENAI_AGENTS (+ deps, its own openai) with pip --target; return that dir."""
    return _pip_target_install(agents_python_dir(), f"openai-agents=={PY_OPENAI_AGENTS}",
                               f"openai_agents-{PY_OPENAI_AGENTS}.dist-info")


def ensure_node_sdk(install: str) -> Path:
    """Install the npm packages of ``NODE_INSTALLS[install]`` under their own prefix; return it.

    The packages live in ``<dir>/node_modules/<package>``.
    """
    if not node_available():
        raise ClientUnavailable("node and npm are required for the Node clients")
    packages = NODE_INSTALLS[install]
    specs = [f"{name}@{version}" for name, version in packages.items()]

    def populate(tmp: Path) -> None:
        _run_install(["npm", "install", "--prefix", str(tmp), "--no-audit", "--no-fund",
                      "--loglevel=error", *specs], f"npm {' '.join(specs)}")

    def check(tmp: Path) -> str | None:
        for name, version in packages.items():
            pkg = tmp / "node_modules" / name / "package.json"
            try:
                got = json.loads(pkg.read_text())["version"]
            except (OSError, ValueError, KeyError) as exc:
                return f"cannot read {pkg}: {exc}"
            if got != version:
                return f"npm installed {name}@{got}, wanted {version}"
        return None

    return _cached_install(install, populate, check)


# --- running the programs ------------------------------------------------------------


def _child_env(env: Mapping[str, str], **extra: str) -> dict[str, str]:
    missing = [k for k in REQUIRED_ENV if not env.get(k)]
    if missing:
        raise ValueError(f"client env lacks {', '.join(missing)}")
    out = {**os.environ, **env, **extra}
    # The server is on loopback; a proxy in the environment (axios, requests and
    # curl all honour one) must not intercept it.
    for var in ("NO_PROXY", "no_proxy"):
        parts = [p for p in out.get(var, "").split(",") if p]
        loopback = [h for h in ("127.0.0.1", "localhost", "::1") if h not in parts]
        out[var] = ",".join(parts + loopback)
    return out


def _run_program(cmd: Sequence[str | Path], env: dict[str, str], timeout: float,
                 cwd: Path | None = None) -> dict[str, Any]:
    """Run ``cmd``; return its stdout parsed as one JSON object, or raise ClientError."""
    shown = " ".join(str(c) for c in cmd)
    try:
        proc = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise ClientError(f"{shown} timed out after {timeout}s\nstderr:\n{_tail(exc.stderr)}\n"
                          f"stdout:\n{_tail(exc.stdout)}") from None
    if proc.returncode != 0:
        raise ClientError(f"{shown} exited {proc.returncode}\nstderr:\n{_tail(proc.stderr)}\n"
                          f"stdout:\n{_tail(proc.stdout)}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        # The contract is one JSON object; take the last line in case an SDK
        # printed a warning on stdout before it.
        result = json.loads(lines[-1])
        if not isinstance(result, dict):
            raise ValueError("not a JSON object")
    except (IndexError, ValueError) as exc:
        raise ClientError(f"{shown} printed no JSON object ({exc})\nstdout:\n"
                          f"{_tail(proc.stdout)}\nstderr:\n{_tail(proc.stderr)}") from None
    return result


def run_legacy_python(env: dict[str, str], timeout: float = 120) -> dict[str, Any]:
    """Run legacy_python.py under openai==0.28.1 and return its JSON summary.

    The cached install is the only PYTHONPATH entry; PYTHONPATH precedes
    site-packages, so it shadows the venv's openai>=1 (the script checks the
    imported version and exits 2 if it is not 0.28.1).
    """
    target = ensure_legacy_python()
    child = _child_env(env, PYTHONPATH=str(target))
    return _run_program([sys.executable, CLIENTS_DIR / "legacy_python.py"], child, timeout)


def run_agents_python(env: dict[str, str], timeout: float = 240) -> dict[str, Any]:
    """Run python_agents.py under openai-agents==PY_OPENAI_AGENTS and return its JSON summary.

    The cached install comes first on PYTHONPATH, so its own openai (and pydantic, httpx...)
    shadow the venv's; the program reports the versions it imported.
    """
    target = ensure_agents_python()
    child = _child_env(env, PYTHONPATH=str(target))
    return _run_program([sys.executable, CLIENTS_DIR / "python_agents.py"], child, timeout)


def run_node(script_name: str, env: dict[str, str], timeout: float = 120) -> dict[str, Any]:
    """Run a Node program from this directory (a key of NODE_SCRIPTS) and return its JSON.

    The program is copied into a scratch directory next to a ``node_modules``
    symlink to the cached install: Node resolves both ``require`` and ESM
    ``import`` from the script's own directory upwards, and NODE_PATH is
    ignored by ESM, so this works for .js and .mjs alike (NODE_PATH is set
    too, for anything the script loads by other means). A copy, not a link:
    Node resolves imports from the real path of the main script.
    """
    if script_name not in NODE_SCRIPTS:
        raise ValueError(f"unknown Node client {script_name!r}; known: {sorted(NODE_SCRIPTS)}")
    prefix = ensure_node_sdk(NODE_SCRIPTS[script_name])
    modules = prefix / "node_modules"
    with tempfile.TemporaryDirectory(prefix="modelhost-node-client-") as scratch:
        work = Path(scratch)
        shutil.copy2(CLIENTS_DIR / script_name, work / script_name)
        (work / "node_modules").symlink_to(modules, target_is_directory=True)
        child = _child_env(env, NODE_PATH=str(modules))
        return _run_program(["node", work / script_name], child, timeout, cwd=work)


def run_php(env: dict[str, str], timeout: float = 120) -> dict[str, Any]:
    """Run php_curl.php with the system php and return its JSON.

    Needs ``php`` with the curl extension; raises ClientUnavailable otherwise.
    It is not installed on demand: ``.ci/run`` installs Debian's
    ``php-cli php-curl`` (about 25 s with apt-get update on this image).
    """
    if not php_available():
        raise ClientUnavailable(_php_problem() or "php with curl is unavailable")
    return _run_program(["php", CLIENTS_DIR / "php_curl.php"], _child_env(env), timeout)


def install_all() -> dict[str, float]:
    """Install every cached SDK that this machine can use; return seconds per SDK."""
    timings: dict[str, float] = {}
    start = time.monotonic()
    ensure_legacy_python()
    timings[f"python openai=={PY_LEGACY_OPENAI}"] = time.monotonic() - start
    start = time.monotonic()
    ensure_agents_python()
    timings[f"python openai-agents=={PY_OPENAI_AGENTS}"] = time.monotonic() - start
    if node_available():
        for install in NODE_INSTALLS:
            start = time.monotonic()
            ensure_node_sdk(install)
            timings[f"npm {install}"] = time.monotonic() - start
    return timings


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit(f"usage: {sys.argv[0]} install")
    for what, seconds in install_all().items():
        print(f"{what}: ready in {seconds:.1f}s ({cache_root()})")
