-- Palisade: the mixed workload (benches/run.sh's mixed part). Each request is picked at
-- random with the weights of bench.MIX (70% get, 20% put, 5% txn, 5% keepalive): the
-- request of get.lua (a linearizable read of a random key), put.lua (a write of a random
-- key), txn.lua (2 compares and 2 puts) or keepalive.lua (a random lease of BENCH_LEASES).
local bench = require("common")
require("palisade.get")
require("palisade.put")
require("palisade.txn")
require("palisade.keepalive")

-- Answers are told apart in this order; a put is answered with the key's kv, as a get.
bench.mix({ "keepalive", "txn", "get" }, { put = "get" })
