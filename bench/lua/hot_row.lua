-- PATCH /items/<id>/qty on one item, +1 and -1 in turn, so qty stays where it was.
local common = dofile("bench/lua/common.lua")
local requests, n = {}, 0

function init(args)
  local path = "/items/" .. os.getenv("BENCH_ITEM") .. "/qty"
  requests[1] = wrk.format("PATCH", path, nil, '{"delta": 1}')
  requests[2] = wrk.format("PATCH", path, nil, '{"delta": -1}')
end

function request()
  n = n + 1
  return requests[n % 2 + 1]
end
