"""What the limiter costs a request: `Limiter.admit` + `Limiter.reserve` + `Limiter.settle`, one after another.

    .venv/bin/python bench/limits_reserve.py [--requests 2000] [--redis redis://127.0.0.1:6379/0]

Runs against the in-process store and (with --redis) a Redis, in two shapes: the defaults (the
settings' RPM and TPM, plus a project token quota), and a project with its own tighter RPM and
TPM (more buckets). Limits come from a SQLite store through the policy cache, as in a server;
the ledger is read only when a quota counter is first seeded. Prints one JSON line per case with
the mean and percentiles in microseconds. Only public `Limiter` calls are used, so the same
script measures an older checkout (``PYTHONPATH=old/src``); one from before `admit` existed
(issue #12, item 7) is timed as its single `reserve` + `settle`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from modelhost.auth import Principal
from modelhost.limits import LimitPolicy, Limiter, RateLimits
from modelhost.limits.memory import MemoryBackend
from modelhost.store import UsageLedger, migrate, open_engine, session_factory
from modelhost.store import limits as stored
from modelhost.store import tenancy

MODEL = "m"


async def measure(backend_kind: str, shape: str, requests: int, redis_url: str, home: Path) -> dict[str, object]:
    engine = open_engine(f"sqlite:///{home / f'{backend_kind}-{shape}.db'}")
    migrate(engine)
    sessions = session_factory(engine)
    with sessions() as session:
        org = tenancy.create_organization(session, "Bench")
        session.commit()
        project = tenancy.default_project(session, org.id)
        assert project is not None
        stored.put_quota(session, organization_id=org.id, scope="project", scope_id=project.id, unit="tokens",
                         period="month", hard_limit=10**15, soft_limit=None)
        if shape == "project-limits":
            stored.put_rate_limit(session, organization_id=org.id, scope="project", scope_id=project.id, model=MODEL,
                                  values={"max_requests_per_1_minute": 10**8, "max_tokens_per_1_minute": 10**11})
        session.commit()
        who = Principal(org.id, project.id, "user", "key", "project")
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    if backend_kind == "redis":
        from modelhost.limits.redis_backend import RedisBackend

        backend = RedisBackend(redis_url)
    else:
        backend = MemoryBackend()
    defaults = RateLimits(10**9, 10**12, 0, 0)  # never refuses: every request runs the whole path
    limiter = Limiter(backend, LimitPolicy(sessions, defaults, cache_seconds=3600), UsageLedger(sessions), prices={},
                      key_prefix=prefix)
    steps = "admit+reserve" if hasattr(limiter, "admit") else "reserve"
    took: list[float] = []
    try:
        for i in range(requests + 50):  # the first 50 warm up (seeding, script loading, caches)
            started = time.perf_counter()
            if steps == "admit+reserve":  # the request is counted before its planning, its tokens after
                admission = await limiter.admit(who, model=MODEL, request_id=f"r{i}")
                held = await limiter.reserve(admission, request_id=f"r{i}", prompt_tokens=20, max_tokens=100, n=1)
                await limiter.abandon(admission)  # what the server does as planning ends: a no-op here
            else:
                held = await limiter.reserve(who, model=MODEL, request_id=f"r{i}", prompt_tokens=20, max_tokens=100, n=1)
            await limiter.settle(held, prompt_tokens=20, completion_tokens=30)
            if i >= 50:
                took.append((time.perf_counter() - started) * 1e6)
    finally:
        if backend_kind == "redis":
            import redis

            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(match=f"{prefix}*", count=500):
                client.delete(key)
            client.close()
        await limiter.close()
        engine.dispose()
    took.sort()
    return {
        "store": backend_kind,
        "shape": shape,
        "steps": steps,
        "requests": requests,
        "mean_us": round(statistics.fmean(took), 1),
        "p50_us": round(took[len(took) // 2], 1),
        "p99_us": round(took[int(len(took) * 0.99)], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--redis", default=None, help="a redis:// URL; without it only the in-process store")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        for kind in ["memory"] + (["redis"] if args.redis else []):
            for shape in ("defaults", "project-limits"):
                print(json.dumps(asyncio.run(measure(kind, shape, args.requests, args.redis or "", Path(home)))), flush=True)


if __name__ == "__main__":
    main()
