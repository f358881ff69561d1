-- Inclusion proofs of random entries, for bench/audit.py: bench/wrk.lua (same counters, same
-- BENCH_JSON line, same per-response cost) plus a `request` that asks
--   GET /v1/audit/proofs/inclusion?index=<i>&tree_size=<s>
-- with i uniform in [0, N) and s = N, or, for a share of the requests, s uniform in (i, N].
--
-- Environment (besides wrk.lua's; BENCH_MODE must be GET):
--   BENCH_PROOF_SIZE     N, the size of the loaded log
--   BENCH_PROOF_EARLIER  the share (0..1) of requests about an earlier tree size (default 0.5)

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "wrk.lua")

local size = assert(tonumber(os.getenv("BENCH_PROOF_SIZE")), "BENCH_PROOF_SIZE is not set")
local earlier = tonumber(os.getenv("BENCH_PROOF_EARLIER") or "0.5")

function request()
  local index = math.random(0, size - 1)
  local tree_size = size
  if math.random() < earlier then
    tree_size = math.random(index + 1, size)
  end
  return wrk.format(
    "GET", string.format("/v1/audit/proofs/inclusion?index=%d&tree_size=%d", index, tree_size)
  )
end
