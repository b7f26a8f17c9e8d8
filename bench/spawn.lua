-- wrk script for bench/cluster.py: POST one uniquely named pack spawn per request.
local next_id = 0
function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
end
counter = 0
request = function()
  counter = counter + 1
  local body = '{"spec":{"name":"' .. os.getenv("RUN") .. tid .. '-' .. counter .. '"}}'
  return wrk.format("POST", "/v1/packs", {["Content-Type"]="application/json", ["Authorization"]="Bearer " .. os.getenv("CANIDAE_TOKEN")}, body)
end
