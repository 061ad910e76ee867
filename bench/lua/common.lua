-- Shared by every workload: the token, JSON headers, per-thread seeds, and the result line.
-- Requests are formatted in init() or request(), never at load time: wrk sets Host in its init.
local common = {}

wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
wrk.headers["Content-Type"] = "application/json"

-- Runs in the main state once per thread: numbering them keeps seeds and names apart.
local thread_count = 0
function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_id", thread_count)
end

function common.seed()
  math.randomseed(tonumber(os.getenv("BENCH_SEED")) + thread_id * 7919)
end

-- The item ids the runner seeded, one per line.
function common.read_ids()
  local ids = {}
  for line in io.lines(os.getenv("BENCH_IDS")) do
    ids[#ids + 1] = line
  end
  return ids
end

-- One JSON line for the runner. status counts answers >= 400; the rest are socket errors.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, '
      .. '"p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    math.floor(latency:percentile(50)), math.floor(latency:percentile(99))))
end

return common
