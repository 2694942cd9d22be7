-- Palisade: keep one of the preloaded leases alive (POST /v1/leases/<id>/keepalive); the
-- answer carries the lease's whole TTL again (ttl_ms) once the renewal is committed.
local bench = require("common")

assert(#bench.leases > 0, "BENCH_LEASES: no lease ids")
local ttl = '"ttl_ms":' .. string.format("%d", bench.lease_ttl * 1000) .. ','

bench.load("keepalive", {
  method = "POST",
  build = function() return "/v1/leases/" .. bench.lease() .. "/keepalive" end,
  check = function(status, body)
    return status == 200 and body:find(ttl, 1, true) ~= nil
  end,
})
