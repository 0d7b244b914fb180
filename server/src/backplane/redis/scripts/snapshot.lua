-- A room's state for a joining or resuming session: epoch, head, whether the history
-- since the client's position is complete, the members, and the entries to replay.
-- KEYS: meta, log, users, names. ARGV: since epoch ('' for a fresh join), since
-- offset, new epoch, history cutoff ms, history TTL s, '1' when `since` is a position the
-- server delivered (then one beyond the head means history went back in time; from a
-- client it may be a mistake or malice, and must not wipe the room), the most entries to
-- return (the replay's first page; the rest comes from history_page), the most member
-- names to return (the member list's first page).
-- Reply: epoch, head, status (fresh|ok|lost), member count, n, n members, then
-- (offset, from, body, ts)*.
local meta, log, users, names = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
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
    -- The first page only; offsets are contiguous and history is trimmed from the
    -- oldest, so if the entry after `since` is there, the rest up to the head is too.
    entries = redis.call('XRANGE', log, '(0-' .. since, '+', 'COUNT', ARGV[7])
    local first = entries[1]
    local cutoff = tonumber(ARGV[4])
    if not first or first[1] ~= ('0-' .. (since + 1)) or tonumber(first[2][6]) < cutoff then
      status = 'lost'
      entries = {}
    else
      status = 'ok'
    end
  end
end
redis.call('EXPIRE', meta, ARGV[5])
redis.call('EXPIRE', log, ARGV[5])
-- The member count and the first page of names. The names are rebuilt from the users
-- when the two disagree (written by a node older than the names, during an upgrade).
local count = redis.call('HLEN', users)
if redis.call('ZCARD', names) ~= count then
  redis.call('DEL', names)
  for _, user in ipairs(redis.call('HKEYS', users)) do redis.call('ZADD', names, 0, user) end
end
local members = redis.call('ZRANGE', names, '-', '+', 'BYLEX', 'LIMIT', 0, ARGV[8])
local out = {epoch, tostring(head), status, tostring(count), tostring(#members)}
for _, m in ipairs(members) do table.insert(out, m) end
for _, e in ipairs(entries) do
  table.insert(out, string.sub(e[1], 3))
  table.insert(out, e[2][2])
  table.insert(out, e[2][4])
  table.insert(out, e[2][6])
end
return out
