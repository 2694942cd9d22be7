-- etcd v3 JSON gateway: keep one of the preloaded leases alive (POST /v3/lease/keepalive,
-- one request of the keepalive stream per HTTP request). The answer carries the granted
-- TTL; for a lease etcd does not know it has none (and is still 200), so the check needs it.
local bench = require("common")

assert(#bench.leases > 0, "BENCH_LEASES: no lease ids")
local ttl = '"TTL":"' .. string.format("%d", bench.lease_ttl) .. '"'

bench.load("keepalive", {
  method = "POST",
  build = function() return "/v3/lease/keepalive", '{"ID":"' .. bench.lease() .. '"}' end,
  check = function(status, body)
    return status == 200 and body:find(ttl, 1, true) ~= nil
  end,
})
