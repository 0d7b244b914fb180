--! allow-oom
-- Drops a room's oldest messages until its history holds at most the given bytes (the
-- cluster-wide history budget). Offsets stay: a client resuming from before the new
-- oldest message gets `recovered: false`, as with any message that aged out.
-- KEYS: meta, log. ARGV: bytes to keep, entry overhead bytes. Reply: the room's bytes.
local meta, log = KEYS[1], KEYS[2]
local keep, overhead = tonumber(ARGV[1]), tonumber(ARGV[2])
local bytes = tonumber(redis.call('HGET', meta, 'bytes') or '0')
for _ = 1, 100 do
  if bytes <= keep then break end
  local batch = redis.call('XRANGE', log, '-', '+', 'COUNT', 100)
  if #batch == 0 then
    bytes = 0
    break
  end
  for _, entry in ipairs(batch) do
    if bytes <= keep then break end
    redis.call('XDEL', log, entry[1])
    bytes = bytes - (#entry[2][2] + #entry[2][4] + overhead)
  end
end
if bytes < 0 then bytes = 0 end
if redis.call('EXISTS', meta) == 1 then redis.call('HSET', meta, 'bytes', bytes) end
return bytes
