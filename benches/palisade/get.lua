-- benches/palisade/get.lua: linearizable read (the default) of a preloaded key.
local bench = require("bench")

wrk.method = "GET"

bench.check = function(status, headers, body) return status == 200 end

function request()
  return wrk.format(nil, "/v1/kv/" .. bench.existing_key())
end
