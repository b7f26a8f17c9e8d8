-- wrk script for bench/vs_etcd.py: one etcd v3 put (HTTP/JSON gateway) of a new key per request.
-- The gateway takes base64 keys; a key made of 16 base64 digits (a run prefix, the thread, a
-- counter) is valid base64 as it stands, so no encoder is needed: etcd stores its 12 decoded bytes.
local next_id = 0
function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
end
counter = 0
request = function()
  counter = counter + 1
  local key = string.format("%s%04d%08d", os.getenv("RUN"), tid, counter)
  local body = '{"key":"' .. key .. '","value":"dmFsdWUtb2YtYS1iZW5jaC13cml0ZQ=="}'
  return wrk.format("POST", "/v3/kv/put", {["Content-Type"]="application/json"}, body)
end
