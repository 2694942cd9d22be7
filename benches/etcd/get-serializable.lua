-- etcd v3 JSON gateway: serializable read of one key from the local member, no quorum
-- round (POST /v3/kv/range {"serializable": true}).
local bench = require("common")

local value = bench.b64(bench.value)

bench.load("get-serializable", {
  method = "POST",
  build = function()
    return "/v3/kv/range", '{"key":"' .. bench.b64(bench.key()) .. '","serializable":true}'
  end,
  check = function(status, body)
    return status == 200 and body:find(value, 1, true) ~= nil
  end,
})
