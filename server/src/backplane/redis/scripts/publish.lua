-- Assigns the next offset of a room, appends the message to its history and publishes
-- it, in one step, so live order equals history order on every node. Keeps the room's
-- history bytes in `meta.bytes` (each entry costs sender + body + a fixed overhead), so
-- the cluster-wide history budget can be enforced.
-- Records the message's event for the application in the same step when asked.
-- KEYS: meta, log, then optionally an idempotency key ('' for none: server API) and the
-- events stream. ARGV: from, body, published_us, new epoch, now ms, max messages, max age
-- ms, history TTL s, room channel, entry overhead bytes, then the idempotency key's
-- lifetime in seconds, the events stream's most entries and the room.
-- `PUB` is PUBLISH or SPUBLISH (cluster mode). Reply: epoch, offset, the room's bytes,
-- and 1 when an undelivered event was dropped to make room (else 0); or, when the
-- idempotency key was used already, that publish's epoch, offset, 'dup' and 0.
local meta, log, idem, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if idem == '' then idem = nil end
if idem then
  local seen = redis.call('GET', idem)
  if seen then
    local bar = string.find(seen, '|', 1, true)
    return {string.sub(seen, 1, bar - 1), string.sub(seen, bar + 1), 'dup', '0'}
  end
end
local overhead = tonumber(ARGV[10])
local epoch = redis.call('HGET', meta, 'epoch')
local head = tonumber(redis.call('HGET', meta, 'head') or '0')
if not epoch or (head > 0 and redis.call('EXISTS', log) == 0) then
  -- A new room, or one whose history is gone while its offsets are not (the keys were
  -- evicted or expired apart): a new epoch, so no client takes a gap for a whole history.
  epoch = ARGV[4]
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'head', 0, 'bytes', 0)
end
local offset = redis.call('HINCRBY', meta, 'head', 1)
redis.call('XADD', log, '0-' .. offset, 'f', ARGV[1], 'b', ARGV[2], 't', ARGV[5])
local added = #ARGV[1] + #ARGV[2] + overhead
local freed = 0
local left = redis.call('XLEN', log)
local max = tonumber(ARGV[6])
local cutoff = tonumber(ARGV[5]) - tonumber(ARGV[7])
for _ = 1, 64 do
  local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
  if #first == 0 then break end
  local fields = first[1][2]
  if left <= max and tonumber(fields[6]) >= cutoff then break end
  redis.call('XDEL', log, first[1][1])
  freed = freed + #fields[2] + #fields[4] + overhead
  left = left - 1
end
local bytes = redis.call('HINCRBY', meta, 'bytes', added - freed)
if bytes < 0 then
  -- Entries written before the room counted bytes were trimmed.
  bytes = 0
  redis.call('HSET', meta, 'bytes', 0)
end
redis.call('EXPIRE', meta, ARGV[8])
redis.call('EXPIRE', log, ARGV[8])
if idem then redis.call('SET', idem, epoch .. '|' .. offset, 'EX', ARGV[11]) end
local dropped = 0
if events then
  local backlog = tonumber(ARGV[12])
  if redis.call('XLEN', events) >= backlog then dropped = 1 end
  redis.call('XADD', events, 'MAXLEN', backlog, '*', 'k', 'message', 'r', ARGV[13], 'e', epoch,
    'o', offset, 'f', ARGV[1], 'b', ARGV[2], 't', ARGV[5])
end
redis.call(PUB, ARGV[9], 'M|' .. offset .. '|' .. ARGV[3] .. '|' .. epoch .. '|' .. ARGV[1] .. '|' .. ARGV[2])
return {epoch, tostring(offset), tostring(bytes), tostring(dropped)}
