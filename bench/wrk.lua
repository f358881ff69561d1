-- One wrk script for every measurement (bare, GET, POST), so that the per-response Lua cost
-- (the `response` hook that counts non-2xx answers) is the same in all of them.
--
-- Driven by environment variables (bench/loadgen.py sets them):
--   BENCH_MODE       GET (default) or POST
--   BENCH_AUTH       value of the Authorization header (optional)
--   BENCH_BODY_FILE  file holding the POST body (POST only)
--   BENCH_RUN        a token unique to this wrk run, part of every Idempotency-Key
-- At the end one line `BENCH_JSON {...}` carries the figures for the harness.

local mode = os.getenv("BENCH_MODE") or "GET"
local auth = os.getenv("BENCH_AUTH")
local body_file = os.getenv("BENCH_BODY_FILE")
local run_token = os.getenv("BENCH_RUN") or tostring(os.time())

wrk.method = mode
if auth and auth ~= "" then
  wrk.headers["Authorization"] = auth
end

-- Main state: keep the threads so `done` can collect their counters.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

-- Thread state from here on.
function init(args)
  non2xx = 0
  responses = 0
  statuses = {}
  counter = 0
  math.randomseed(os.time() * 1000 + (thread_id or 0) * 7919)
  if mode == "POST" then
    local fh = assert(io.open(assert(body_file, "BENCH_BODY_FILE is not set"), "rb"))
    post_body = fh:read("*a")
    fh:close()
    post_headers = {}
    for k, v in pairs(wrk.headers) do
      post_headers[k] = v
    end
    post_headers["Content-Type"] = "application/json"
  end
end

if mode == "POST" then
  -- Dynamic requests only for POST: GET keeps wrk's pre-built request.
  function request()
    counter = counter + 1
    post_headers["Idempotency-Key"] = string.format(
      "bench-%s-%d-%d-%08x", run_token, thread_id, counter, math.random(0, 0x7fffffff)
    )
    return wrk.format("POST", nil, post_headers, post_body)
  end
end

function response(status, headers, body)
  responses = responses + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    local key = tostring(status)
    statuses[key] = (statuses[key] or 0) + 1
  end
end

local function json_number(x)
  if x == nil or x ~= x then
    return "null"
  end
  return string.format("%.3f", x)
end

function done(summary, latency, requests)
  local total_non2xx, total_responses = 0, 0
  local statuses_all = {}
  for _, thread in ipairs(threads) do
    total_non2xx = total_non2xx + (thread:get("non2xx") or 0)
    total_responses = total_responses + (thread:get("responses") or 0)
    local st = thread:get("statuses") or {}
    for code, n in pairs(st) do
      statuses_all[code] = (statuses_all[code] or 0) + n
    end
  end
  local parts = {}
  for code, n in pairs(statuses_all) do
    table.insert(parts, string.format('"%s":%d', code, n))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"min":%s,"mean":%s,"stdev":%s,"max":%s,'
      .. '"p50":%s,"p90":%s,"p99":%s,"p999":%s},'
      .. '"responses":%d,"non2xx":%d,"statuses":{%s}}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    json_number(latency.min), json_number(latency.mean), json_number(latency.stdev),
    json_number(latency.max),
    json_number(latency:percentile(50)), json_number(latency:percentile(90)),
    json_number(latency:percentile(99)), json_number(latency:percentile(99.9)),
    total_responses, total_non2xx, table.concat(parts, ",")
  ))
end
