-- wrk script: GET /api/products/{id} for ids 1..max in turn (each wrk thread takes every n-th id), then
-- around again. Used to warm a cache over the whole catalog.
-- Usage: wrk ... -s bench/sequential-product.lua http://127.0.0.1:PORT -- [max_id] [threads]

local threads = 0

function setup(thread)
   threads = threads + 1
   thread:set("thread_no", threads)
end

function init(args)
   max_id = tonumber(args[1]) or 100000
   stride = tonumber(args[2]) or 1
   next_id = (thread_no or 1)
end

function request()
   local id = next_id
   next_id = next_id + stride
   if next_id > max_id then next_id = next_id - max_id end
   return wrk.format("GET", "/api/products/" .. id)
end
