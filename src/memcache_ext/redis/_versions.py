"""Versioned values in Redis, and the invalidation messages that carry the versions.

Each key of the tier is a Redis hash: ``v``, the version (a decimal string),
and ``d``, the serialized value; a hash with ``v`` and no ``d`` is a
*tombstone*: the key was deleted at that version. Every write goes through one
Lua script (:data:`WRITE_SCRIPT`), so comparing versions, writing, setting the
expiry and publishing the invalidation happen as one step in Redis: no other
command runs in between, which is what makes "never overwrite a newer value"
hold under any interleaving of writers, in any number of processes.

Where versions come from (the tier's ``version_of``):

* the caller's (``version_of=callable``, or ``version=`` on a call): a row
  version or ``updated_at`` from the database, an int >= 0. A write or a fill
  older than what Redis holds is refused; a write of the version Redis already
  holds changes nothing; a value may replace a tombstone of the same version.
  This orders writers by the database's commit order.
* the tier's own per-key counter (``version_of=None``): a write takes the
  version ``max(stored + 1, Redis TIME in us)``; a fill (a load after a miss)
  is stored only if the key is still as the reader saw it before the load
  began (same version, no value; a fill keeps that version, 0 over nothing),
  so a load that read the database before a concurrent write never replaces
  that write, nor its tombstone. This orders
  writes by when they reach Redis: concurrent writers of one key must be
  serialized by the caller (use the database's versions otherwise).

A write that reaches Redis after its deadline (queued in a frozen server, run
when it resumes) is not applied: the caller gave up on it, counted it as
failed and will replay a tombstone once Redis answers, and a late write must
not land after that tombstone. The deadline is sent in Redis's clock, from an
offset the tier measures (``TIME``) at each subscription and every minute, and
before a write made when it has not measured it yet.

A clear (:data:`CLEAR_SCRIPT`) leaves a tombstone where each value was, so
the same ordering holds across it: a writer that read a row before the clear
cannot store an older version after it. What it cannot cover: a key Redis did
not hold at all, filled by a load that began before the clear.

Messages: ``[instance_id, "k", key, version, redis_time_us]`` (JSON) for a
write or delete of ``key``, ``[instance_id, "*", ""]`` for a clear. Older
three-field messages are still understood (no version: always applied).
"""

from __future__ import annotations

import json
import operator
from typing import Any, Optional

__all__ = [
    "CLEAR_SCRIPT",
    "WRITE_SCRIPT",
    "check_version",
    "message_head",
    "parse_message",
    "parse_version",
]

#: KEYS[1]: the value's key. ARGV: 1 op ("set", "fill", "del"), 2 mode ("auto", "caller"),
#: 3 version ("" in auto mode, and for a delete without one), 4 data, 5 expiry in ms (0: none),
#: 6 channel, 7 message head (the JSON list up to the version), 8 the version the reader
#: saw ("" for none; auto fills), 9 "1" when the value there could not be used (replace it),
#: 10 the call's deadline in Redis time (us; "" for none).
#: Returns {status, version, had}: status 1 written, 0 refused (newer in Redis),
#: 2 unchanged (that version is there already), 3 too late (past the deadline: the caller
#: has given up on it and will replay a tombstone); had: 1 if the key held a value.
WRITE_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local key, op, mode, ver = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local now = redis.call('TIME')
local now_us = string.format('%d', tonumber(now[1]) * 1000000 + tonumber(now[2]))
if ARGV[10] ~= '' and tonumber(now_us) > tonumber(ARGV[10]) then return {3, '', 0} end
local function older(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local kind = redis.call('TYPE', key)['ok']
if kind ~= 'hash' and kind ~= 'none' then
  redis.call('DEL', key)
  kind = 'none'
end
local cur, has = false, false
if kind == 'hash' then
  local got = redis.call('HMGET', key, 'v', 'd')
  cur, has = got[1], got[2] ~= false
  if cur and not string.match(cur, '^%d+$') then cur = false end
end
local had = has and 1 or 0
if mode == 'auto' then
  if op == 'fill' then
    local base = ARGV[8]
    if base == '' then base = '0' end
    if has and cur == base and ARGV[9] ~= '1' then return {2, cur, had} end
    if (cur or '') ~= ARGV[8] then return {0, cur or '', had} end
    if has and ARGV[9] ~= '1' then return {2, cur, had} end
    ver = base
  else
    local n = tonumber(now_us)
    if cur then
      local c = tonumber(cur) + 1
      if c > n then n = c end
    end
    ver = string.format('%d', n)
  end
else
  if ver == '' then ver = cur or '0' end
  if cur then
    if older(ver, cur) then return {0, cur, had} end
    if ver == cur then
      if op == 'del' and not has then return {2, cur, had} end
      if op ~= 'del' and has and ARGV[9] ~= '1' then return {2, cur, had} end
    end
  end
end
if op == 'del' then
  redis.call('HDEL', key, 'd')
  redis.call('HSET', key, 'v', ver)
else
  redis.call('HSET', key, 'v', ver, 'd', ARGV[4])
end
local px = tonumber(ARGV[5])
if px > 0 then redis.call('PEXPIRE', key, px) else redis.call('PERSIST', key) end
if op ~= 'fill' then
  redis.call('PUBLISH', ARGV[6], ARGV[7] .. ver .. ',' .. now_us .. ']')
end
return {1, ver, had}
"""


#: KEYS: keys of the namespace to clear. ARGV: 1 a tombstone's expiry in ms, 2 mode ("auto":
#: the tier's own versions, "caller"). A value becomes a tombstone, so that a write or fill
#: older than what was cleared is still refused: at its version in caller mode; in auto mode
#: at a new version, max(stored + 1, Redis TIME in us), as an auto delete does, so that a
#: fill that began before the clear is refused too (tombstones get one as well); anything
#: that is not the tier's goes. Returns the number of values cleared.
CLEAR_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local px, auto, n = tonumber(ARGV[1]), ARGV[2] == 'auto', 0
local now_us = 0
if auto then
  local now = redis.call('TIME')
  now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
end
for _, key in ipairs(KEYS) do
  local ver = false
  if redis.call('TYPE', key)['ok'] == 'hash' then ver = redis.call('HGET', key, 'v') end
  if ver and string.match(ver, '^%d+$') then
    local had = redis.call('HDEL', key, 'd') == 1
    if had then n = n + 1 end
    if auto then
      local c = tonumber(ver) + 1
      if c < now_us then c = now_us end
      redis.call('HSET', key, 'v', string.format('%d', c))
    end
    if had or auto then
      local left = redis.call('PTTL', key)
      if left < 0 or left > px then redis.call('PEXPIRE', key, px) end
    end
  else
    redis.call('UNLINK', key)
  end
end
return n
"""


def check_version(version: Any) -> int:
    """``version`` as an int >= 0: TypeError for anything else than an int, ValueError if < 0."""
    if isinstance(version, bool):
        raise TypeError("a version must be an int >= 0, not bool")
    try:
        v = operator.index(version)
    except TypeError:
        raise TypeError(
            f"a version must be an int >= 0 (a row version, updated_at in ns or ms), "
            f"not {type(version).__name__}"
        ) from None
    if v < 0:
        raise ValueError(f"a version must be >= 0, got {v}")
    return v


def parse_version(raw: Any) -> Optional[int]:
    """A version read from Redis (bytes of decimal digits), or None."""
    if raw is None:
        return None
    try:
        text = raw.decode("ascii") if isinstance(raw, (bytes, bytearray)) else str(raw)
        return int(text) if text.isdigit() else None
    except (UnicodeDecodeError, ValueError):
        return None


def message_head(instance_id: str, key: str) -> str:
    """The message of a change of ``key`` up to its version (the script appends the rest)."""
    return json.dumps([instance_id, "k", key], separators=(",", ":"), ensure_ascii=False)[:-1] + ","


def clear_message(instance_id: str) -> bytes:
    return json.dumps([instance_id, "*", ""], separators=(",", ":")).encode()


def parse_message(data: Any) -> tuple[str, str, str, Optional[int], Optional[int]]:
    """(source, op, key, version or None, Redis time in us or None); ValueError if malformed."""
    try:
        fields = json.loads(data)
    except (TypeError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON: {type(exc).__name__}: {exc}") from None
    if not isinstance(fields, list) or not 3 <= len(fields) <= 5:
        raise ValueError("not a list of 3 to 5 fields")
    src, op, key = fields[:3]
    if not (isinstance(src, str) and isinstance(op, str) and isinstance(key, str)):
        raise ValueError("source, op and key must be strings")
    if op not in ("k", "*"):
        raise ValueError(f"unknown op {op!r}")
    extra: list[Optional[int]] = []
    for value in fields[3:]:
        if value is not None and (type(value) is not int or not 0 <= value < 2**63):
            raise ValueError("version and time must be ints from 0 to 2**63 - 1")
        extra.append(value)
    extra += [None] * (2 - len(extra))
    return src, op, key, extra[0], extra[1]
