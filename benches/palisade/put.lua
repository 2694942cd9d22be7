-- Palisade: write one key of the key space (PUT /v1/kv/<key> {"value": ...}).
local bench = require("common")

local body = '{"value":"' .. bench.value .. '"}'

bench.load("put", {
  method = "PUT",
  build = function() return "/v1/kv/" .. bench.key(), body end,
  check = function(status, body) return status == 200 end,
})
