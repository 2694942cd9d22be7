-- benches/common.lua: what every wrk script shares. A product's put.lua / get.lua /
-- get-serializable.lua / txn.lua only builds the HTTP request for its keys (bench.key(),
-- bench.two_keys()); this
-- module owns the key space, the value, base64, response checking and the result line,
-- and installs wrk's setup/init/response/done hooks.
--
-- Environment (set by benches/run.sh):
--   BENCH_KEYS    size of the key space (10000): keys are "k%015d" (16 bytes), picked at
--                 random; benches/bench.py preload writes all of them first
--   BENCH_VERIFY  "1": check every response with bench.check (the warm-up does this)
local M = {}

M.keys = tonumber(os.getenv("BENCH_KEYS") or "10000")
M.verify = os.getenv("BENCH_VERIFY") == "1"
-- 64 bytes; benches/bench.py writes the same value in the preload.
M.value = string.rep("0123456789abcdef", 4)

function M.key()
  return string.format("k%015d", math.random(0, M.keys - 1))
end

-- Two different keys of the key space (a transaction may not write one key twice).
function M.two_keys()
  local a = math.random(0, M.keys - 1)
  local b = (a + math.random(1, math.max(M.keys - 1, 1))) % M.keys
  return string.format("k%015d", a), string.format("k%015d", b)
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
