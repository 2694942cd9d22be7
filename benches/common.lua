-- benches/common.lua: what every wrk script shares. A product's put.lua / get.lua /
-- get-serializable.lua / txn.lua / keepalive.lua only describes its request, as a kind
-- (bench.load below: its method, how to build its path and body from bench.key(),
-- bench.two_keys() or bench.lease(), and how to check its answer); this module owns the
-- key space, the value, the lease ids, base64, building the HTTP request, pacing, response
-- checking and the result line, and installs wrk's setup/init/request/response/done (and,
-- when paced, delay) hooks. A product's mixed.lua requires that product's scripts (each
-- keeps its kind in bench.kinds) and picks among them at random (bench.mix).
--
-- Environment (set by benches/run.sh):
--   BENCH_KEYS    size of the key space (10000): keys are "k%015d" (16 bytes), picked at
--                 random; benches/bench.py preload writes all of them first
--   BENCH_PREFIX  put before every key ("": none); the watch part writes under "load/",
--                 so that one watch of that prefix sees the whole load
--   BENCH_GROUPS  0 or unset: the keys as above; N: key i is "g<i mod N>/k%015d" (after
--                 BENCH_PREFIX), so N recursive watches, one of each group g0/ .. g<N-1>/,
--                 together see every write (the mixed part; bench.py preload writes the
--                 same keys when given N)
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
M.groups = tonumber(os.getenv("BENCH_GROUPS") or "0")
M.verify = os.getenv("BENCH_VERIFY") == "1"
-- 64 bytes; benches/bench.py writes the same value in the preload.
M.value = string.rep("0123456789abcdef", 4)

-- The token goes into wrk.headers, which every request built by bench.format starts from.
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

-- Key i of the key space.
function M.name(i)
  if M.groups > 0 then
    return M.prefix .. string.format("g%d/k%015d", i % M.groups, i)
  end
  return M.prefix .. string.format("k%015d", i)
end

function M.key()
  return M.name(math.random(0, M.keys - 1))
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
  return M.name(a), M.name(b)
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

-- An HTTP request of METHOD to PATH, with BODY (nil: none) sent as application/json, and
-- the headers of wrk.headers (Host, and the token if any). The two header tables are
-- copied from wrk.headers at the first request (wrk.init has set Host by then).
local plain_headers, json_headers
function M.format(method, path, body)
  if not plain_headers then
    plain_headers, json_headers = {}, {}
    for k, v in pairs(wrk.headers) do
      plain_headers[k], json_headers[k] = v, v
    end
    json_headers["Content-Type"] = "application/json"
  end
  return wrk.format(method, path, body and json_headers or plain_headers, body)
end

-- A request kind: { method = "PUT", build = function() return path, body end,
-- check = function(status, body) return ok end }. bench.load(name, kind) makes it the
-- request of every connection of this wrk (and its check the warm-up's), and keeps it as
-- bench.kinds[name] for mixed.lua, which requires the product's scripts and then picks
-- among their kinds. (A script may not return a value: wrk runs it with luaL_dofile and
-- would find the value on its Lua stack.)
M.kinds = {}
function M.load(name, kind)
  M.kinds[name] = kind
  M.check = kind.check
  local method, build = kind.method, kind.build
  request = function()
    return M.format(method, build())
  end
end

-- The mixed workload: each request picked at random with these weights (%), the kinds of
-- the product's get.lua, put.lua, txn.lua and keepalive.lua.
M.MIX = { { "get", 70 }, { "put", 20 }, { "txn", 5 }, { "keepalive", 5 } }

-- bench.mix(order, like): the kinds of bench.kinds named in M.MIX (their scripts required
-- first). Every request
-- counts as sent of its kind (mix_sent, per thread; the result line gives the totals as
-- sent_<name>=N: the requests of each kind written, at most one a connection of them
-- still unanswered when the run ends). wrk's response hook is not told which connection,
-- so which request, an answer belongs to: the check tells the kind of an answer by its
-- shape, trying the kinds' own checks in the order ORDER (the most particular first); an
-- answer no check passes is bad. LIKE[name] = other: the answers of that kind cannot be
-- told from those of the other (Palisade answers a put with the key, as a get), and are
-- counted with them. At the end, more answers of a kind (with those like it) than
-- requests sent of it count as bad too (a wrong answer that passes for another kind's).
function M.mix(order, like)
  local kinds = M.kinds
  like = like or {}
  local names, cum, total = {}, {}, 0
  for i, w in ipairs(M.MIX) do
    assert(kinds[w[1]], "bench.mix: no kind " .. w[1])
    names[i], total = w[1], total + w[2]
    cum[i] = total
  end
  local n = #names
  M.check = function(status, body)
    for _, name in ipairs(order) do
      if kinds[name].check(status, body) then
        mix_got[name] = mix_got[name] + 1
        return true
      end
    end
    return false
  end
  local base_init = init
  init = function(args)
    mix_sent, mix_got = {}, {}
    for _, name in ipairs(names) do
      mix_sent[name], mix_got[name] = 0, 0
    end
    base_init(args)
  end
  request = function()
    local r, i = math.random(1, total), 1
    while cum[i] < r do i = i + 1 end
    local name = names[i]
    mix_sent[name] = mix_sent[name] + 1
    local kind = kinds[name]
    return M.format(kind.method, kind.build())
  end
  M.result = function(threads)
    local sent, got, fields = {}, {}, {}
    for _, name in ipairs(names) do sent[name], got[name] = 0, 0 end
    for _, t in ipairs(threads) do
      local s, g = t:get("mix_sent") or {}, t:get("mix_got") or {}
      for _, name in ipairs(names) do
        sent[name] = sent[name] + (s[name] or 0)
        got[name] = got[name] + (g[name] or 0)
      end
    end
    local over = 0
    if M.verify then
      for _, name in ipairs(names) do
        if not like[name] then
          local s, g = sent[name], got[name]
          for other, to in pairs(like) do
            if to == name then s, g = s + sent[other], g + got[other] end
          end
          if g > s then over = over + g - s end
        end
      end
    end
    for _, name in ipairs(names) do
      fields[#fields + 1] = string.format("sent_%s=%d", name, sent[name])
    end
    return " " .. table.concat(fields, " ") .. (M.verify and string.format(" over=%d", over) or ""), over
  end
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

-- Set by bench.mix: function(threads) -> more fields for the result line, more bad answers.
M.result = nil

function done(summary, latency, requests)
  local nbad, more = 0, ""
  for _, t in ipairs(threads) do nbad = nbad + (t:get("bad") or 0) end
  if M.result then
    local extra_bad
    more, extra_bad = M.result(threads)
    nbad = nbad + extra_bad
  end
  local e = summary.errors
  io.write(string.format(
    "BENCHRESULT requests=%d duration_s=%.3f p50_us=%d p99_us=%d errors=%d bad=%d%s\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout, nbad, more))
end

return M
