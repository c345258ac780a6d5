"""Counters in Redis, shared by every replica: each operation is one Lua script.

Why the scripts are atomic: Redis runs a script to the end before it serves any other command,
from any client, so a script's reads and writes form one step. `acquire` first reads every
charge and decides, and only if all fit writes them; no other replica can read or write between
the decision and the writes, so 50 replicas racing for a budget that fits one see one success.
(The same holds on a Redis replica set: scripts are replicated by their effects.) All keys of
one request share the organization's hash tag ``{org-…}``, so they sit in one Redis Cluster slot,
as a multi-key script requires.

The client never retries a command: a retried acquire whose first reply was lost would take the
charges twice. A failure is reported as `LimiterUnavailable`, and the request is refused (503).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from modelhost.limits.base import (
    Adjustment,
    Budget,
    Bucket,
    Charge,
    ChargeState,
    LimiterUnavailable,
    Outcome,
)

# Lua 5.1 numbers are doubles (exact for integers up to 2^53); num() writes all 17 digits, which
# tostring() (14 digits) would not.
_NOW = """
local function num(x) return string.format('%.17g', x) end
local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function bucket_level(key, cap, period)
  local h = redis.call('HMGET', key, 'level', 'ts')
  local level, ts = tonumber(h[1]), tonumber(h[2])
  if level == nil then return cap, now end
  if now > ts then
    level = math.min(cap, level + (now - ts) * cap / period)
    ts = now
  end
  return level, ts
end
local function put_bucket(key, level, ts, cap, period)
  if level >= cap then
    redis.call('DEL', key)  -- a full bucket and a missing one are the same
    return
  end
  redis.call('HSET', key, 'level', num(level), 'ts', num(ts))
  redis.call('PEXPIRE', key, math.ceil((cap - level) * period / cap * 1000) + 1000)
end
"""

# KEYS[i] is charge i. ARGV[1] is now in seconds ('' = the Redis server's clock), then four
# ARGV per charge: 'b' (bucket) capacity period amount | 'q' (budget) limit('' = none) amount -
# | 'l' (lease) limit member ttl. Returns four strings per charge: allowed ('1', '0', or 'm' for a
# budget that does not exist yet), level, reset, wait (for a budget: its counter's generation).
# Writes happen only if every charge fits. A budget is a hash {used, epoch}; a key of any other
# type (a plain integer an earlier release wrote) counts as missing, so `SEED` rebuilds it.
ACQUIRE = _NOW + """
local out, ok, seen = {}, true, {}
for i, key in ipairs(KEYS) do
  local a = 1 + (i - 1) * 4
  local kind = ARGV[a + 1]
  if kind == 'b' then
    local cap, period, amount = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
    local level, ts = bucket_level(key, cap, period)
    local rate = cap / period
    seen[i] = {level, ts}
    if level >= amount then
      local left = level - amount
      table.insert(out, '1'); table.insert(out, num(left))
      table.insert(out, num((cap - left) / rate)); table.insert(out, '0')
    else
      ok = false
      table.insert(out, '0'); table.insert(out, num(level))
      table.insert(out, num((cap - level) / rate)); table.insert(out, num((amount - level) / rate))
    end
  elseif kind == 'q' then
    local h = redis.pcall('HMGET', key, 'used', 'epoch')
    local used, epoch = nil, nil
    if not h.err then used, epoch = tonumber(h[1]), h[2] end
    if not used or not epoch then
      ok = false
      table.insert(out, 'm'); table.insert(out, '0'); table.insert(out, '0'); table.insert(out, '')
    else
      local limit, amount = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
      if limit == nil or used + amount <= limit then
        table.insert(out, '1'); table.insert(out, num(used + amount))
      else
        ok = false
        table.insert(out, '0'); table.insert(out, num(used))
      end
      table.insert(out, '0'); table.insert(out, epoch)
    end
  else
    local limit = tonumber(ARGV[a + 2])
    redis.call('ZREMRANGEBYSCORE', key, '-inf', num(now))  -- forget holders that expired
    local holders = redis.call('ZCARD', key)
    if holders < limit then
      table.insert(out, '1'); table.insert(out, num(holders + 1))
    else
      ok = false
      table.insert(out, '0'); table.insert(out, num(holders))
    end
    table.insert(out, '0'); table.insert(out, '0')
  end
end
if ok then
  for i, key in ipairs(KEYS) do
    local a = 1 + (i - 1) * 4
    local kind = ARGV[a + 1]
    if kind == 'b' then
      local cap, period, amount = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
      put_bucket(key, seen[i][1] - amount, seen[i][2], cap, period)
    elseif kind == 'q' then
      redis.call('HINCRBY', key, 'used', ARGV[a + 3])
    else
      local ttl_ms = math.ceil(tonumber(ARGV[a + 4]) * 1000)
      redis.call('ZADD', key, num(now + tonumber(ARGV[a + 4])), ARGV[a + 3])
      if redis.call('PTTL', key) < ttl_ms then redis.call('PEXPIRE', key, ttl_ms) end
    end
  end
end
return out
"""

# KEYS[i] is adjustment i. ARGV[1] is now, then four ARGV per adjustment: 'b' capacity period
# amount-put-back | 'q' amount-added amount-reserved epoch | 'l' member - -. Returns one string
# per adjustment: a budget's new value, '' otherwise (or when the budget no longer exists). A
# budget of another generation than the reservation's was re-seeded from the ledger after the
# acquire and never held the reservation: it gets the whole cost (added + reserved).
SETTLE = _NOW + """
local out = {}
for i, key in ipairs(KEYS) do
  local a = 1 + (i - 1) * 4
  local kind = ARGV[a + 1]
  local value = ''
  if kind == 'b' then
    local cap, period, amount = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
    local level, ts = bucket_level(key, cap, period)
    put_bucket(key, math.min(cap, level + amount), ts, cap, period)
  elseif kind == 'q' then
    local epoch = redis.pcall('HGET', key, 'epoch')
    if type(epoch) == 'string' then
      local add = tonumber(ARGV[a + 2])
      if epoch ~= ARGV[a + 4] then add = add + tonumber(ARGV[a + 3]) end
      value = num(redis.call('HINCRBY', key, 'used', num(add)))
    end
  else
    redis.call('ZREM', key, ARGV[a + 2])
  end
  table.insert(out, value)
end
return out
"""

# KEYS[1] is a budget; ARGV: starting value, lifetime in ms, generation. Creates the counter unless
# one exists; a key of another type (an earlier release's plain integer) is replaced.
SEED = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'hash' then return 0 end
if kind ~= 'none' then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'used', ARGV[1], 'epoch', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


def _number(value: float) -> str:
    return repr(float(value))


def _acquire_args(charge: Charge) -> list[str]:
    if isinstance(charge, Bucket):
        return ["b", str(charge.capacity), _number(charge.period), str(charge.amount)]
    if isinstance(charge, Budget):
        return ["q", "" if charge.limit is None else str(charge.limit), str(charge.amount), ""]
    return ["l", str(charge.limit), charge.member, _number(charge.ttl)]


def _settle_args(adjustment: Adjustment) -> list[str]:
    charge = adjustment.charge
    if isinstance(charge, Bucket):
        return ["b", str(charge.capacity), _number(charge.period), str(adjustment.amount)]
    if isinstance(charge, Budget):
        return ["q", str(adjustment.amount), str(charge.amount), adjustment.epoch]
    return ["l", charge.member, "", ""]


class RedisBackend:
    """`LimitBackend` in Redis at `url`. `clock` (tests) replaces the Redis server's clock."""

    def __init__(self, url: str, *, timeout: float = 1.0, clock: Callable[[], float] | None = None) -> None:
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self._clock = clock
        self._acquire = self._client.register_script(ACQUIRE)
        self._settle = self._client.register_script(SETTLE)
        self._seed = self._client.register_script(SEED)

    def _now(self) -> str:
        return _number(self._clock()) if self._clock is not None else ""

    async def acquire(self, charges: Sequence[Charge]) -> Outcome:
        args = [self._now()]
        for charge in charges:
            args += _acquire_args(charge)
        try:
            reply = await self._acquire(keys=[c.key for c in charges], args=args)
        except (RedisError, OSError) as exc:
            raise LimiterUnavailable(f"Redis: {type(exc).__name__}") from exc
        states: list[ChargeState] = []
        missing: list[str] = []
        for i, charge in enumerate(charges):
            allowed, level, reset, wait = reply[4 * i : 4 * i + 4]
            if allowed == "m":
                missing.append(charge.key)
            if isinstance(charge, Budget):  # its fourth string is the counter's generation
                states.append(ChargeState(allowed == "1", float(level), epoch=wait))
            else:
                states.append(ChargeState(allowed == "1", float(level), float(reset), float(wait)))
        return Outcome(tuple(states), tuple(missing))

    async def seed(self, key: str, value: int, ttl: float) -> None:
        generation = secrets.token_hex(8)  # unique per seed: replicas seeding at once create one generation
        try:
            await self._seed(keys=[key], args=[str(value), str(max(1, math.ceil(ttl * 1000))), generation])
        except (RedisError, OSError) as exc:
            raise LimiterUnavailable(f"Redis: {type(exc).__name__}") from exc

    async def settle(self, adjustments: Sequence[Adjustment]) -> tuple[int | None, ...]:
        args = [self._now()]
        for adjustment in adjustments:
            args += _settle_args(adjustment)
        try:
            reply = await self._settle(keys=[a.charge.key for a in adjustments], args=args)
        except (RedisError, OSError) as exc:
            raise LimiterUnavailable(f"Redis: {type(exc).__name__}") from exc
        return tuple(int(value) if value != "" else None for value in reply)

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._client.aclose()
