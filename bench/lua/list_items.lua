-- GET of one fixed page of /items (BENCH_PATH: the first page, or one after a cursor).
local common = dofile("bench/lua/common.lua")
local req

function init(args)
  req = wrk.format("GET", os.getenv("BENCH_PATH"))
end

function request()
  return req
end
