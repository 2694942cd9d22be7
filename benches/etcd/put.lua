-- etcd v3 JSON gateway: write one key of the key space (POST /v3/kv/put, base64 key and value).
local bench = require("common")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local value = bench.b64(bench.value)

bench.check = function(status, body)
  return status == 200 and body:find('"revision"', 1, true) ~= nil
end

function request()
  return wrk.format(nil, "/v3/kv/put", nil,
    '{"key":"' .. bench.b64(bench.key()) .. '","value":"' .. value .. '"}')
end
