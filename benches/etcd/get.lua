-- etcd v3 JSON gateway: linearizable read (etcd's default) of one key (POST /v3/kv/range).
local bench = require("common")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local value = bench.b64(bench.value)

bench.check = function(status, body)
  return status == 200 and body:find(value, 1, true) ~= nil
end

function request()
  return wrk.format(nil, "/v3/kv/range", nil, '{"key":"' .. bench.b64(bench.key()) .. '"}')
end
