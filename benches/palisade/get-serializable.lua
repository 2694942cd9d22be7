-- Palisade: serializable read of one key from the local replica, no quorum round
-- (GET /v1/kv/<key>?consistency=serializable).
local bench = require("common")

bench.load("get-serializable", {
  method = "GET",
  build = function() return "/v1/kv/" .. bench.key() .. "?consistency=serializable" end,
  check = function(status, body)
    return status == 200 and body:find(bench.value, 1, true) ~= nil
  end,
})
