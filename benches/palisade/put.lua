-- Palisade: write one key of the key space (PUT /v1/kv/<key> {"value": ...}).
local bench = require("common")

wrk.method = "PUT"
wrk.headers["Content-Type"] = "application/json"
local body = '{"value":"' .. bench.value .. '"}'

bench.check = function(status, body) return status == 200 end

function request()
  return wrk.format(nil, "/v1/kv/" .. bench.key(), nil, body)
end
