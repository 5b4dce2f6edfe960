"""The Redis driver's Lua scripts, their SHA1s, and the cached heads of their commands.

Every script that changes a queue touches only that queue's keys (one hash tag, one cluster
slot) and is atomic. :func:`command` builds an ``EVALSHA`` call; the packed head (``EVALSHA``,
the SHA, the key count and the keys) is cached per (script, keys), since a driver calls each
script on the same few key sets over and over.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, NamedTuple

from asynctasq.drivers._resp import pack, pack_head

LUA_UNPACK_CHUNK = 500
MAX_CLAIM = LUA_UNPACK_CHUNK
"""Most messages one claim script leases; a larger ``limit`` takes several (Lua stack limit)."""

# Shared by the scripts that move messages: the Redis clock in ms, and RPUSH/LPUSH/ZREM/HDEL in
# chunks (Lua's unpack has a stack limit).
_LUA_COMMON = f"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function each_chunk(cmd, key, list)
  local n = #list
  for i = 1, n, {LUA_UNPACK_CHUNK} do
    redis.call(cmd, key, unpack(list, i, math.min(i + {LUA_UNPACK_CHUNK - 1}, n)))
  end
end
local function signal(wake)
  if redis.call('LLEN', wake) == 0 then redis.call('RPUSH', wake, '1') end
end
local warning = ''
local function expect(key, kind, now)
  -- a key of the wrong type (written by hand) is set aside so the queue keeps working
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= kind then
    local aside = key .. ':corrupt:' .. now
    redis.call('RENAME', key, aside)
    warning = warning .. key .. ' held a ' .. t .. ' instead of a ' .. kind .. '; moved to ' .. aside .. '. '
  end
end
"""

# KEYS: ready delayed leased body count token wake
# ARGV: limit lease_ms token_base
# -> {wait_hint_ms, warning, id1, body1, count1, token1, ...}; the hint (ms until the next
#    delayed message or lease falls due, -1 for none) only when nothing was claimed.
_CLAIM = (
    _LUA_COMMON
    + f"""
local ready, delayed, leased, body, count, token, wake = unpack(KEYS)
local now = now_ms()
expect(ready, 'list', now); expect(delayed, 'zset', now)
expect(leased, 'zset', now); expect(wake, 'list', now)
local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, {LUA_UNPACK_CHUNK})
if #due > 0 then
  redis.call('ZREM', delayed, unpack(due))
  redis.call('RPUSH', ready, unpack(due))
end
local lost = redis.call('ZRANGEBYSCORE', leased, '-inf', now, 'LIMIT', 0, {LUA_UNPACK_CHUNK})
if #lost > 0 then
  redis.call('ZREM', leased, unpack(lost))
  redis.call('HDEL', token, unpack(lost))
  local back = {{}}
  for i = #lost, 1, -1 do back[#back + 1] = lost[i] end
  redis.call('LPUSH', ready, unpack(back))
end
local out = {{-1, warning}}
local limit = tonumber(ARGV[1])
local ids = false
if limit > 0 then ids = redis.call('LPOP', ready, limit) end
if ids then
  local bodies = redis.call('HMGET', body, unpack(ids))
  local expiry = now + tonumber(ARGV[2])
  local base = ARGV[3]
  local leases, tokens = {{}}, {{}}
  for i = 1, #ids do
    local id, b = ids[i], bodies[i]
    if not b then
      -- not one of our ids: a value pushed by hand; deliver it as a message of its own
      b = id
      id = base .. '-raw' .. i
      redis.call('HSET', body, id, b)
    end
    local tok = base .. '.' .. i
    local n = redis.call('HINCRBY', count, id, 1)
    leases[#leases + 1] = expiry; leases[#leases + 1] = id
    tokens[#tokens + 1] = id; tokens[#tokens + 1] = tok
    out[#out + 1] = id; out[#out + 1] = b; out[#out + 1] = n; out[#out + 1] = tok
  end
  redis.call('ZADD', leased, unpack(leases))
  redis.call('HSET', token, unpack(tokens))
  if redis.call('LLEN', ready) > 0 then signal(wake) end
else
  local hint = -1
  local d = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  if d[2] then hint = tonumber(d[2]) - now end
  local l = redis.call('ZRANGE', leased, 0, 0, 'WITHSCORES')
  if l[2] and (hint < 0 or tonumber(l[2]) - now < hint) then hint = tonumber(l[2]) - now end
  if hint == 0 then hint = 1 end
  out[1] = hint
end
return out
"""
)

# KEYS: ready delayed body wake
# ARGV: id1 body1 delay_ms1 id2 body2 delay_ms2 ... -> a warning ('' when all is well)
# An id already stored is skipped, so a retried enqueue never doubles a message.
_ENQUEUE = (
    _LUA_COMMON
    + """
local ready, delayed, body, wake = unpack(KEYS)
local now = now_ms()
expect(ready, 'list', now); expect(delayed, 'zset', now); expect(wake, 'list', now)
local push, later = {}, nil
for i = 1, #ARGV, 3 do
  local id = ARGV[i]
  if redis.call('HSETNX', body, id, ARGV[i + 1]) == 1 then
    local ms = tonumber(ARGV[i + 2])
    if ms > 0 then
      redis.call('ZADD', delayed, now + ms, id)
      later = later or {}
      later[id] = true
    else
      push[#push + 1] = id
    end
  end
end
if #push > 0 then
  each_chunk('RPUSH', ready, push)
  signal(wake)
elseif later then
  -- a new earliest delayed message: wake a blocked consumer so it waits less
  local first = redis.call('ZRANGE', delayed, 0, 0)[1]
  if first and later[first] then signal(wake) end
end
return warning
"""
)

# KEYS: leased body count token ; ARGV: id1 token1 id2 token2 ...
# -> the 0-based positions of the pairs NOT acked (stale tokens): empty when all were held
_ACK = (
    _LUA_COMMON
    + """
local leased, body, count, token = unpack(KEYS)
local done, stale = {}, {}
for i = 1, #ARGV, 2 do
  if redis.call('HGET', token, ARGV[i]) == ARGV[i + 1] then
    done[#done + 1] = ARGV[i]
  else
    stale[#stale + 1] = (i - 1) / 2
  end
end
if #done > 0 then
  each_chunk('ZREM', leased, done)
  each_chunk('HDEL', body, done)
  each_chunk('HDEL', count, done)
  each_chunk('HDEL', token, done)
end
return stale
"""
)

# KEYS: leased token ; ARGV: lease_ms id1 token1 ... -> positions of the pairs not held, as ack
_EXTEND = (
    _LUA_COMMON
    + """
local leased, token = unpack(KEYS)
local expiry = now_ms() + tonumber(ARGV[1])
local stale = {}
for i = 2, #ARGV, 2 do
  if redis.call('HGET', token, ARGV[i]) == ARGV[i + 1] then
    redis.call('ZADD', leased, 'XX', expiry, ARGV[i])
  else
    stale[#stale + 1] = (i - 2) / 2
  end
end
return stale
"""
)

# KEYS: ready delayed leased body count token wake
# ARGV: id token delay_ms has_body body
_RELEASE = (
    _LUA_COMMON
    + """
local ready, delayed, leased, body, count, token, wake = unpack(KEYS)
local id = ARGV[1]
if redis.call('HGET', token, id) ~= ARGV[2] then return 0 end
redis.call('HDEL', token, id)
redis.call('ZREM', leased, id)
if ARGV[4] == '1' then
  redis.call('HSET', body, id, ARGV[5])
  redis.call('HDEL', count, id)
else
  local n = redis.call('HINCRBY', count, id, -1)
  if n <= 0 then redis.call('HDEL', count, id) end
end
local ms = tonumber(ARGV[3])
if ms > 0 then
  redis.call('ZADD', delayed, now_ms() + ms, id)
  if redis.call('ZRANGE', delayed, 0, 0)[1] == id then signal(wake) end
else
  redis.call('RPUSH', ready, id)
  signal(wake)
end
return 1
"""
)

# KEYS: leased body count token failed failed_error failed_at ; ARGV: id token error
_FAIL = (
    _LUA_COMMON
    + """
local leased, body, count, token, failed, failed_error, failed_at = unpack(KEYS)
local id = ARGV[1]
if redis.call('HGET', token, id) ~= ARGV[2] then return 0 end
local b = redis.call('HGET', body, id) or ''
redis.call('ZREM', leased, id)
redis.call('HDEL', body, id)
redis.call('HDEL', count, id)
redis.call('HDEL', token, id)
redis.call('HSET', failed, id, b)
redis.call('HSET', failed_error, id, ARGV[3])
redis.call('ZADD', failed_at, now_ms(), id)
return 1
"""
)

# KEYS: ready body count failed failed_error failed_at wake ; ARGV: ids (none: all)
_FAILED_REQUEUE = (
    _LUA_COMMON
    + """
local ready, body, count, failed, failed_error, failed_at, wake = unpack(KEYS)
local ids = ARGV
if #ids == 0 then ids = redis.call('ZRANGE', failed_at, 0, -1) end
local back = {}
for i = 1, #ids do
  local b = redis.call('HGET', failed, ids[i])
  if b then
    redis.call('HSET', body, ids[i], b)
    redis.call('HDEL', count, ids[i])
    redis.call('HDEL', failed, ids[i])
    redis.call('HDEL', failed_error, ids[i])
    redis.call('ZREM', failed_at, ids[i])
    back[#back + 1] = ids[i]
  end
end
if #back > 0 then
  each_chunk('RPUSH', ready, back)
  signal(wake)
end
return #back
"""
)

# KEYS: failed failed_error failed_at ; ARGV: ids (none: all)
_FAILED_PURGE = """
local failed, failed_error, failed_at = unpack(KEYS)
if #ARGV == 0 then
  local n = redis.call('ZCARD', failed_at)
  redis.call('DEL', failed, failed_error, failed_at)
  return n
end
local n = 0
for i = 1, #ARGV do
  if redis.call('HDEL', failed, ARGV[i]) == 1 then n = n + 1 end
  redis.call('HDEL', failed_error, ARGV[i])
  redis.call('ZREM', failed_at, ARGV[i])
end
return n
"""

# KEYS: ready delayed leased body count token wake
_PURGE = """
local n = redis.call('HLEN', KEYS[4])
redis.call('UNLINK', unpack(KEYS))
return n
"""

# KEYS: ready delayed leased body count token ; ARGV: id -> 1 when removed, 0 when not waiting
_CANCEL = (
    _LUA_COMMON
    + """
local ready, delayed, leased, body, count, token = unpack(KEYS)
local id = ARGV[1]
if redis.call('HEXISTS', body, id) == 0 then return 0 end
local lease_end = redis.call('ZSCORE', leased, id)
if lease_end then
  if tonumber(lease_end) > now_ms() then return 0 end
  redis.call('ZREM', leased, id)  -- an expired lease: the message waits again
elseif redis.call('ZREM', delayed, id) == 0 then
  redis.call('LREM', ready, 1, id)
end
redis.call('HDEL', body, id)
redis.call('HDEL', count, id)
redis.call('HDEL', token, id)
return 1
"""
)

# KEYS: result ; ARGV: value ttl_ms
_STORE_RESULT = """
redis.call('DEL', KEYS[1])
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: workers workers_expiry ; ARGV: name info ttl_ms
_REGISTER_WORKER = (
    _LUA_COMMON
    + """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[3]), ARGV[1])
return 1
"""
)

# KEYS: workers workers_expiry -> infos of live workers
_LIST_WORKERS = (
    _LUA_COMMON
    + """
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms())
if #gone > 0 then
  each_chunk('ZREM', KEYS[2], gone)
  each_chunk('HDEL', KEYS[1], gone)
end
return redis.call('HVALS', KEYS[1])
"""
)


class Script(NamedTuple):
    name: str
    source: str
    sha: str


def _script(name: str, source: str) -> Script:
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


CLAIM = _script("claim", _CLAIM)
ENQUEUE = _script("enqueue", _ENQUEUE)
ACK = _script("ack", _ACK)
EXTEND = _script("extend", _EXTEND)
RELEASE = _script("release", _RELEASE)
FAIL = _script("fail", _FAIL)
FAILED_REQUEUE = _script("failed_requeue", _FAILED_REQUEUE)
FAILED_PURGE = _script("failed_purge", _FAILED_PURGE)
PURGE = _script("purge", _PURGE)
CANCEL = _script("cancel", _CANCEL)
STORE_RESULT = _script("store_result", _STORE_RESULT)
REGISTER_WORKER = _script("register_worker", _REGISTER_WORKER)
LIST_WORKERS = _script("list_workers", _LIST_WORKERS)
SCRIPTS: tuple[Script, ...] = (
    CLAIM, ENQUEUE, ACK, EXTEND, RELEASE, FAIL, FAILED_REQUEUE, FAILED_PURGE, PURGE, CANCEL,
    STORE_RESULT, REGISTER_WORKER, LIST_WORKERS,
)  # fmt: skip

HEAD_CACHE_SIZE = 4096
"""Cached command heads; past this the cache starts over (many short-lived result keys)."""
_heads: dict[tuple[str, tuple[str, ...]], tuple[bytes, int]] = {}


def command(script: Script, keys: tuple[str, ...], args: Sequence[Any]) -> bytes:
    """The packed ``EVALSHA`` of ``script`` on ``keys`` with ``args``."""
    cache_key = (script.sha, keys)
    head = _heads.get(cache_key)
    if head is None:
        if len(_heads) >= HEAD_CACHE_SIZE:
            _heads.clear()
        head = _heads[cache_key] = pack_head(("EVALSHA", script.sha, len(keys), *keys))
    return pack(args, *head)


def load_commands() -> list[bytes]:
    """``SCRIPT LOAD`` of every script (after a connect, or a ``NOSCRIPT`` reply)."""
    return [pack(("SCRIPT", "LOAD", s.source)) for s in SCRIPTS]


__all__ = [
    "ACK", "CANCEL", "CLAIM", "ENQUEUE", "EXTEND", "FAIL", "FAILED_PURGE", "FAILED_REQUEUE", "LIST_WORKERS",
    "MAX_CLAIM", "PURGE", "REGISTER_WORKER", "RELEASE", "SCRIPTS", "STORE_RESULT", "Script",
    "command", "load_commands",
]  # fmt: skip
