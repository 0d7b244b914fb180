-- Assigns the next offset of a room, appends the message to its history and publishes
-- it, in one step, so live order equals history order on every node.
-- KEYS: meta, log. ARGV: from, body, published_us, new epoch, now ms, max messages,
-- max age ms, history TTL s, room channel. `PUB` is PUBLISH or SPUBLISH (cluster mode).
local meta, log = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[4]
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'head', 0)
end
local offset = redis.call('HINCRBY', meta, 'head', 1)
redis.call('XADD', log, 'MAXLEN', ARGV[6], '0-' .. offset, 'f', ARGV[1], 'b', ARGV[2], 't', ARGV[5])
local cutoff = tonumber(ARGV[5]) - tonumber(ARGV[7])
for _ = 1, 64 do
  local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
  if #first == 0 or tonumber(first[1][2][6]) >= cutoff then break end
  redis.call('XDEL', log, first[1][1])
end
redis.call('EXPIRE', meta, ARGV[8])
redis.call('EXPIRE', log, ARGV[8])
redis.call(PUB, ARGV[9], 'M|' .. offset .. '|' .. ARGV[3] .. '|' .. epoch .. '|' .. ARGV[1] .. '|' .. ARGV[2])
return {epoch, tostring(offset)}
