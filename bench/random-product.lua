-- wrk script: GET /api/products/{id} with a uniformly random id in 1..max per request.
-- Usage: wrk ... -s bench/random-product.lua http://127.0.0.1:PORT -- [max_id]   (default 100000)
-- Set WRK_SEED to make the id sequence reproducible; otherwise it is seeded from the clock.

local threads = 0

function setup(thread)
   threads = threads + 1
   thread:set("thread_no", threads)
end

function init(args)
   max_id = tonumber(args[1]) or 100000
   local base = tonumber(os.getenv("WRK_SEED") or "") or os.time()
   -- Each wrk thread has its own Lua state: give each a different seed.
   math.randomseed(base + 7919 * (thread_no or 0))
   for _ = 1, 10 do math.random() end
end

function request()
   return wrk.format("GET", "/api/products/" .. math.random(1, max_id))
end
