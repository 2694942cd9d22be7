-- Palisade: linearizable read (the default) of one key (GET /v1/kv/<key>).
local bench = require("common")

wrk.method = "GET"

bench.check = function(status, body)
  return status == 200 and body:find(bench.value, 1, true) ~= nil
end

function request()
  return wrk.format(nil, "/v1/kv/" .. bench.key())
end
