//! The Lua scripts Redis runs for the shared budget: each decision is one atomic EVALSHA, on
//! Redis's own clock (`TIME`), so replicas' clocks never need to agree.
//!
//! Times are integer microseconds. A TAT is written with `%.0f` because Lua's default number
//! format keeps only 14 digits, and a microsecond clock has 16.

use std::sync::LazyLock;

/// The upstream budget and the request's client and global limits in one decision: reserves
/// the next slot of a prefix's GCRA if it comes within `max_wait` and every limit passes, and
/// takes from all of them or from none. KEYS[1]: the prefix's TAT, KEYS[2..]: the limits' TATs.
/// ARGV: interval, tolerance, max_wait (µs) of the budget, then interval and tolerance per limit.
/// Returns `{verdict, wait, remaining...}`: verdict 1 (reserved: go in `wait` µs), 0 (the budget
/// has no slot within `max_wait`: `wait` is how far the next one is), or -i (the limit KEYS[i+1]
/// refused: `wait` is the µs until it would pass); one `remaining` count per limit (after this
/// request when reserved).
pub(super) static ADMIT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {1, 0}
local tats = {}
for i = 2, #KEYS do
  local tolerance = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now) or now
  if tat < now then tat = now end
  tats[i] = tat
  if out[1] == 1 and tat - tolerance > now then
    out[1] = -(i - 1)
    out[2] = tat - tolerance - now
  end
end
local interval = tonumber(ARGV[1])
local btat = tonumber(redis.call('GET', KEYS[1]) or now) or now
if btat < now then btat = now end
local wait = btat - tonumber(ARGV[2]) - now
if wait < 0 then wait = 0 end
if out[1] == 1 then
  if wait > tonumber(ARGV[3]) then
    out[1] = 0
  end
  out[2] = wait
end
if out[1] == 1 then
  local new_tat = btat + interval
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1000)
end
for i = 2, #KEYS do
  local li = tonumber(ARGV[2 * i])
  local tolerance = tonumber(ARGV[2 * i + 1])
  local tat = tats[i]
  if out[1] == 1 then
    tat = tat + li
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
  end
  local remaining = math.floor((now + tolerance - tat) / li) + 1
  if remaining < 0 then remaining = 0 end
  out[i + 1] = remaining
end
return out
",
    )
});

/// The client and global limits: one GCRA check per key, taken from all of them only if all
/// pass (a refused request spends nothing). KEYS: the limits' TATs. ARGV: interval and
/// tolerance (µs) per key. Returns `{refused, retry, remaining...}`: `refused` is the 1-based
/// index of the first key that refused (0: admitted), `retry` the µs until it would pass, and
/// one `remaining` count per key (after this request when admitted).
pub(super) static LIMITS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
local out = {0, 0}
for i, key in ipairs(KEYS) do
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or now) or now
  if tat < now then tat = now end
  tats[i] = tat
  if out[1] == 0 and tat - tolerance > now then
    out[1] = i
    out[2] = tat - tolerance - now
  end
end
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tats[i]
  if out[1] == 0 then
    tat = tat + interval
    redis.call('SET', key, string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
  end
  local remaining = math.floor((now + tolerance - tat) / interval) + 1
  if remaining < 0 then remaining = 0 end
  out[i + 2] = remaining
end
return out
",
    )
});

/// The heartbeat: this replica's entry in the replicas' sorted set (scored by Redis's clock in
/// ms), entries older than the TTL dropped. KEYS[1]: the set. ARGV: replica id, TTL (ms).
/// Returns the number of live replicas.
pub(super) static HEARTBEAT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCARD', KEYS[1])
",
    )
});
