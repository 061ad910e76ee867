-- PATCH /items/<id>/qty, +1 and -1 in turn, each on a random item of the seeded set.
local common = dofile("bench/lua/common.lua")
local ids, n = nil, 0
local bodies = { '{"delta": 1}', '{"delta": -1}' }

function init(args)
  common.seed()
  ids = common.read_ids()
end

function request()
  n = n + 1
  return wrk.format("PATCH", "/items/" .. ids[math.random(#ids)] .. "/qty", nil, bodies[n % 2 + 1])
end
