-- Palisade: keep one of the preloaded leases alive (POST /v1/leases/<id>/keepalive); the
-- answer carries the lease's whole TTL again (ttl_ms) once the renewal is committed.
local bench = require("common")

wrk.method = "POST"
assert(#bench.leases > 0, "BENCH_LEASES: no lease ids")
local ttl = '"ttl_ms":' .. string.format("%d", bench.lease_ttl * 1000) .. ','

bench.check = function(status, body)
  return status == 200 and body:find(ttl, 1, true) ~= nil
end

function request()
  return wrk.format(nil, "/v1/leases/" .. bench.lease() .. "/keepalive")
end
