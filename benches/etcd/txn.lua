-- etcd v3 JSON gateway: a transaction of 2 compares and 2 puts (POST /v3/kv/txn, base64
-- keys and values). The compares (VERSION GREATER 0 on two random keys) always hold,
-- since the preload wrote every key, so every transaction takes the success branch and
-- writes two different random keys.
local bench = require("common")

local value = bench.b64(bench.value)

local function compare(key)
  return '{"key":"' .. bench.b64(key) .. '","target":"VERSION","result":"GREATER","version":"0"}'
end

local function put(key)
  return '{"request_put":{"key":"' .. bench.b64(key) .. '","value":"' .. value .. '"}}'
end

bench.load("txn", {
  method = "POST",
  build = function()
    local c1, c2 = bench.two_keys()
    local p1, p2 = bench.two_keys()
    return "/v3/kv/txn",
      '{"compare":[' .. compare(c1) .. ',' .. compare(c2) .. '],"success":[' .. put(p1) .. ',' .. put(p2) .. ']}'
  end,
  check = function(status, body)
    return status == 200 and body:find('"succeeded":true', 1, true) ~= nil
  end,
})
