-- POST /items with a name no other request uses: run prefix, thread number, counter.
local common = dofile("bench/lua/common.lua")
local prefix, n = nil, 0

function init(args)
  prefix = string.format("post-%s-%d-", os.getenv("BENCH_PREFIX"), thread_id)
end

function request()
  n = n + 1
  return wrk.format("POST", "/items", nil, string.format('{"name": "%s%d", "qty": 1}', prefix, n))
end
