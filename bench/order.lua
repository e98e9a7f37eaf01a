-- wrk script: POST /api/orders for a random customer (tokens read from a file, one "id token" per line)
-- buying 1 of a random product in 1..max_product.
-- Usage: wrk ... -s bench/order.lua http://127.0.0.1:PORT -- TOKENS_FILE [max_product]

local threads = 0

function setup(thread)
   threads = threads + 1
   thread:set("thread_no", threads)
end

function init(args)
   customers = {}
   for line in io.lines(args[1]) do
      local id, token = line:match("^(%d+) (%S+)$")
      if id then customers[#customers + 1] = { id = id, token = token } end
   end
   max_product = tonumber(args[2]) or 100
   math.randomseed(os.time() + 7919 * (thread_no or 0))
end

function request()
   local c = customers[math.random(1, #customers)]
   local body = '{"customer_id":' .. c.id .. ',"items":[{"product_id":' .. math.random(1, max_product) .. ',"quantity":1}]}'
   return wrk.format("POST", "/api/orders",
      { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. c.token }, body)
end
