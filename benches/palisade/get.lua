-- Palisade: linearizable read (the default) of one key (GET /v1/kv/<key>).
local bench = require("common")

bench.load("get", {
  method = "GET",
  build = function() return "/v1/kv/" .. bench.key() end,
  check = function(status, body)
    return status == 200 and body:find(bench.value, 1, true) ~= nil
  end,
})
