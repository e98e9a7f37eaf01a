-- wrk script: POST the same image to /api/products/1/media with the API key.
-- Usage: wrk ... -s bench/upload.lua http://127.0.0.1:PORT -- IMAGE_FILE API_KEY
function init(args)
   local f = assert(io.open(args[1], "rb"))
   wrk.body = f:read("*a")
   f:close()
   wrk.method = "POST"
   wrk.path = "/api/products/1/media"
   wrk.headers["Content-Type"] = "application/octet-stream"
   wrk.headers["Authorization"] = "Bearer " .. args[2]
end
