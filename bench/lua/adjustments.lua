-- POST /adjustments: 10 changes of +1 or -1 on 10 distinct random items of the seeded set.
local common = dofile("bench/lua/common.lua")
local ids

function init(args)
  common.seed()
  ids = common.read_ids()
end

function request()
  local chosen, changes = {}, {}
  while #changes < 10 do
    local id = ids[math.random(#ids)]
    if not chosen[id] then
      chosen[id] = true
      local delta = (#changes % 2 == 0) and 1 or -1
      changes[#changes + 1] = string.format('{"id": "%s", "delta": %d}', id, delta)
    end
  end
  return wrk.format("POST", "/adjustments", nil, '{"changes": [' .. table.concat(changes, ", ") .. "]}")
end
