-- wrk script: GET /api/products/{id} with ids drawn from a Zipf distribution (s = ZIPF_S, default 1.0)
-- over 1..max: id k is requested with probability proportional to 1 / k^s.
-- Usage: wrk ... -s bench/zipf-product.lua http://127.0.0.1:PORT -- [max_id]   (default 100000)
-- WRK_SEED makes the sequence reproducible; otherwise each thread is seeded from the clock.

local threads = 0

function setup(thread)
   threads = threads + 1
   thread:set("thread_no", threads)
end

function init(args)
   max_id = tonumber(args[1]) or 100000
   local s = tonumber(os.getenv("ZIPF_S") or "") or 1.0
   local base = tonumber(os.getenv("WRK_SEED") or "") or os.time()
   math.randomseed(base + 7919 * (thread_no or 0))
   for _ = 1, 10 do math.random() end
   -- Cumulative distribution, normalized, for inverse-transform sampling by binary search.
   cdf = {}
   local total = 0
   for k = 1, max_id do
      total = total + 1 / (k ^ s)
      cdf[k] = total
   end
   for k = 1, max_id do cdf[k] = cdf[k] / total end
end

function request()
   local u = math.random()
   local lo, hi = 1, max_id
   while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if cdf[mid] < u then lo = mid + 1 else hi = mid end
   end
   return wrk.format("GET", "/api/products/" .. lo)
end
