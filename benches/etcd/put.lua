-- etcd v3 JSON gateway: write one key of the key space (POST /v3/kv/put, base64 key and value).
local bench = require("common")

local value = bench.b64(bench.value)

bench.load("put", {
  method = "POST",
  build = function()
    return "/v3/kv/put", '{"key":"' .. bench.b64(bench.key()) .. '","value":"' .. value .. '"}'
  end,
  check = function(status, body)
    return status == 200 and body:find('"revision"', 1, true) ~= nil
  end,
})
