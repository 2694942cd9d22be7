-- benches/common.lua: what every wrk script shares. A product's put.lua / get.lua /
-- get-serializable.lua / txn.lua / keepalive.lua only builds the HTTP request for its
-- keys or leases (bench.key(), bench.two_keys(), bench.lease()); this module owns the key
-- space, the value, the lease ids, base64, pacing, response checking and the result line,
-- and installs wrk's setup/init/response/done (and, when paced, delay) hooks.
--
-- Environment (set by benches/run.sh):
--   BENCH_KEYS    size of the key space (10000): keys are "k%015d" (16 bytes), picked at
--                 random; benches/bench.py preload writes all of them first
--   BENCH_PREFIX  put before every key ("": none); the watch part writes under "load/",
--                 so that one watch of that prefix sees the whole load
--   BENCH_VERIFY  "1": check every response with bench.check (the warm-up does this)
--   BENCH_LEASES  a file of lease ids, one a line (benches/bench.py leases writes it);
--                 bench.lease() picks one at random. Ids stay strings: etcd's do not fit
--                 a Lua number exactly
--   BENCH_LEASE_TTL  the TTL (s) those leases were granted with; keepalive checks expect it
--   BENCH_RATE    requests per second of this wrk thread, over all its connections
--                 (run.sh runs one thread); unset or 0: closed loop, as fast as answers come
--   BENCH_TOKEN   a client token (JWT) sent with every request as `Authorization: Bearer
--                 <token>` (the security part, against Palisade with client auth on);
--                 unset or empty: no Authorization header
local M = {}

M.keys = tonumber(os.getenv("BENCH_KEYS") or "10000")
M.prefix = os.getenv("BENCH_PREFIX") or ""
M.verify = os.getenv("BENCH_VERIFY") == "1"
-- 64 bytes; benches/bench.py writes the same value in the preload.
M.value = string.rep("0123456789abcdef", 4)

-- wrk.format uses wrk.headers for every request the scripts build, so the token rides on
-- all of them; a script's own headers (Content-Type) go into the same table.
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

function M.key()
  return M.prefix .. string.format("k%015d", math.random(0, M.keys - 1))
end

M.leases = {}
M.lease_ttl = tonumber(os.getenv("BENCH_LEASE_TTL") or "0")
local lease_file = os.getenv("BENCH_LEASES")
if lease_file and lease_file ~= "" then
  local f = assert(io.open(lease_file, "r"))
  for line in f:lines() do
    if line ~= "" then M.leases[#M.leases + 1] = line end
  end
  f:close()
end

function M.lease()
  return M.leases[math.random(1, #M.leases)]
end

-- Two different keys of the key space (a transaction may not write one key twice).
function M.two_keys()
  local a = math.random(0, M.keys - 1)
  local b = (a + math.random(1, math.max(M.keys - 1, 1))) % M.keys
  return M.prefix .. string.format("k%015d", a), M.prefix .. string.format("k%015d", b)
end

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
function M.b64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    local function ch(shift) local n = math.floor(v / shift) % 64 + 1; return b64chars:sub(n, n) end
    out[#out + 1] = ch(262144) .. ch(4096) .. (b and ch(64) or "=") .. (c and ch(1) or "=")
  end
  return table.concat(out)
end

-- Pacing: wrk calls delay() before each request; every call takes the next slot of a
-- fixed schedule of BENCH_RATE slots a second, so the thread sends at that rate on average.
-- A connection that comes late for its slot (answers were slow) sends at once, so the
-- schedule catches up rather than slipping; the rate falls short only when every
-- connection is waiting for an answer. wrk times a request from when it is sent.
M.rate = tonumber(os.getenv("BENCH_RATE") or "0")
if M.rate > 0 then
  local ffi = require("ffi")
  ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clock_id, bench_timespec *tp);
  ]]
  local ts = ffi.new("bench_timespec")
  local function now_ms()
    ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end
  local gap, next_ms = 1000 / M.rate, nil
  function delay()
    local now = now_ms()
    local slot = next_ms or now
    next_ms = slot + gap
    return math.max(0, math.floor(slot - now))
  end
end

-- Set by a product's script: function(status, body) -> true if the answer is right.
M.check = nil

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
  bad = 0
  if M.verify and M.check then
    response = function(status, headers, body)
      if not M.check(status, body) then bad = bad + 1 end
    end
  end
end

function done(summary, latency, requests)
  local nbad = 0
  for _, t in ipairs(threads) do nbad = nbad + (t:get("bad") or 0) end
  local e = summary.errors
  io.write(string.format(
    "BENCHRESULT requests=%d duration_s=%.3f p50_us=%d p99_us=%d errors=%d bad=%d\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout, nbad))
end

return M
