"""`GET /v1/models` through the ASGI app in-process (no uvicorn, no sockets): the app and its
middleware alone, to tell their cost from the server's.

    PYTHONPATH=<a checkout's src> .venv/bin/python bench/models_inprocess.py [--requests 1000]

Runs the app's lifespan in a fresh home (the bundled model loads), makes one key with the CLI,
warms up with 50 requests, then times `--requests` sequential requests and prints ms per request.
Compare two commits by pointing PYTHONPATH at a `git worktree` of the other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


async def main(requests: int) -> None:
    home = tempfile.mkdtemp()
    os.environ["MODELHOST_HOME"] = home
    from modelhost.api.app import create_app
    from modelhost.config import Settings

    app = create_app(Settings(home=Path(home)))
    async with app.router.lifespan_context(app):
        made = subprocess.run([sys.executable, "-m", "modelhost", "keys", "create", "--json"], capture_output=True, text=True, check=True)
        headers = {"Authorization": f"Bearer {json.loads(made.stdout)['secret']}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            for _ in range(50):
                await client.get("/v1/models", headers=headers)
            started = time.perf_counter()
            for _ in range(requests):
                response = await client.get("/v1/models", headers=headers)
            assert response.status_code == 200
            print(f"{(time.perf_counter() - started) / requests * 1000:.3f} ms per request ({requests} requests)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    asyncio.run(main(parser.parse_args().requests))
