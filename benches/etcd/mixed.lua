-- etcd v3 JSON gateway: the mixed workload (benches/run.sh's mixed part). Each request is
-- picked at random with the weights of bench.MIX (70% get, 20% put, 5% txn, 5% keepalive):
-- the request of get.lua (a linearizable range of a random key), put.lua (a write of a
-- random key), txn.lua (2 compares and 2 puts) or keepalive.lua (a random lease of
-- BENCH_LEASES).
local bench = require("common")
require("etcd.get")
require("etcd.put")
require("etcd.txn")
require("etcd.keepalive")

-- Answers are told apart in this order; a put's answer is the bare header, the last to try.
bench.mix({ "keepalive", "txn", "get", "put" })
