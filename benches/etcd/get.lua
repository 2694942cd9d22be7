-- etcd v3 JSON gateway: linearizable read (etcd's default) of one key (POST /v3/kv/range).
local bench = require("common")

local value = bench.b64(bench.value)

bench.load("get", {
  method = "POST",
  build = function() return "/v3/kv/range", '{"key":"' .. bench.b64(bench.key()) .. '"}' end,
  check = function(status, body)
    return status == 200 and body:find(value, 1, true) ~= nil
  end,
})
