-- GET /events from the oldest kept, 1000 events a page: the change feed's read throughput.
local common = dofile("bench/lua/common.lua")

function request()
  return wrk.format("GET", "/events?limit=1000")
end
