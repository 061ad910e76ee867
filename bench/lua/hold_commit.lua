-- A checkout: POST /holds of 1 unit of a random seeded item, then POST /holds/<id>/commit.
-- Each answered hold is committed by a later request of the same thread, so about half the
-- requests make holds and half commit them.
local common = dofile("bench/lua/common.lua")
local ids, pending = nil, {}

function init(args)
  common.seed()
  ids = common.read_ids()
end

function request()
  local hold = table.remove(pending)
  if hold then
    return wrk.format("POST", "/holds/" .. hold .. "/commit", nil, "")
  end
  return wrk.format("POST", "/holds", nil, '{"lines": [{"id": "' .. ids[math.random(#ids)] .. '", "qty": 1}]}')
end

function response(status, headers, body)
  if status == 201 then
    pending[#pending + 1] = string.match(body, '"id": "([0-9a-f-]+)"')
  end
end
