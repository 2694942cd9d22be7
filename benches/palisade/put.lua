-- benches/palisade/put.lua: one write of a fresh unique key per request.
local bench = require("bench")

wrk.method = "PUT"
wrk.headers["Content-Type"] = "application/json"
local value_json = bench.json_str(bench.value)

bench.check = function(status, headers, body) return status == 200 end

function request()
  return wrk.format(nil, "/v1/kv/" .. bench.next_key(), nil, '{"value":' .. value_json .. '}')
end
