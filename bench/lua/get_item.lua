-- GET /items/<id> of a random item of the seeded set.
local common = dofile("bench/lua/common.lua")
local ids

function init(args)
  common.seed()
  ids = common.read_ids()
end

function request()
  return wrk.format("GET", "/items/" .. ids[math.random(#ids)])
end
