-- etcd v3 JSON gateway: serializable read of one key from the local member, no quorum
-- round (POST /v3/kv/range {"serializable": true}).
local bench = require("common")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local value = bench.b64(bench.value)

bench.check = function(status, body)
  return status == 200 and body:find(value, 1, true) ~= nil
end

function request()
  return wrk.format(nil, "/v3/kv/range", nil,
    '{"key":"' .. bench.b64(bench.key()) .. '","serializable":true}')
end
