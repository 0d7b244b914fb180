-- A room's state for a joining or resuming session: epoch, head, whether the history
-- since the client's position is complete, the members, and the entries to replay.
-- KEYS: meta, log, users. ARGV: since epoch ('' for a fresh join), since
-- offset, new epoch, history cutoff ms, history TTL s, '1' when `since` is a position the
-- server delivered (then one beyond the head means history went back in time; from a
-- client it may be a mistake or malice, and must not wipe the room).
-- Reply: epoch, head, status (fresh|ok|lost), n, n members, then (offset, from, body, ts)*.
local meta, log, users = KEYS[1], KEYS[2], KEYS[3]
local epoch = redis.call('HGET', meta, 'epoch')
local head = tonumber(redis.call('HGET', meta, 'head') or '0')
if not epoch or (head > 0 and redis.call('EXISTS', log) == 0) then
  -- A new room, or one whose history is gone while its offsets are not (see publish).
  epoch = ARGV[3]
  head = 0
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'head', 0, 'bytes', 0)
end
local status = 'fresh'
local entries = {}
if ARGV[1] ~= '' then
  local since = tonumber(ARGV[2])
  if ARGV[1] == epoch and since > head and ARGV[6] == '1' then
    -- A session holds offsets this history no longer has: Redis lost acknowledged
    -- messages but kept the room (a failover to a lagging replica, an AOF rollback).
    -- A new epoch, so no later message reuses an offset a session already holds.
    epoch = ARGV[3]
    head = 0
    redis.call('DEL', log)
    redis.call('HSET', meta, 'epoch', epoch, 'head', 0, 'bytes', 0)
    status = 'lost'
  elseif ARGV[1] ~= epoch then
    status = 'lost'
  elseif since == head then
    status = 'ok'
  else
    entries = redis.call('XRANGE', log, '(0-' .. since, '+')
    local first = entries[1]
    local cutoff = tonumber(ARGV[4])
    if #entries ~= head - since or first[1] ~= ('0-' .. (since + 1)) or tonumber(first[2][6]) < cutoff then
      status = 'lost'
      entries = {}
    else
      status = 'ok'
    end
  end
end
redis.call('EXPIRE', meta, ARGV[5])
redis.call('EXPIRE', log, ARGV[5])
local members = redis.call('HKEYS', users)
local out = {epoch, tostring(head), status, tostring(#members)}
for _, m in ipairs(members) do table.insert(out, m) end
for _, e in ipairs(entries) do
  table.insert(out, string.sub(e[1], 3))
  table.insert(out, e[2][2])
  table.insert(out, e[2][4])
  table.insert(out, e[2][6])
end
return out
