--! allow-oom
-- Removes a room's presence entries of the given dead nodes (their heartbeat keys
-- expired; the caller checked, as they may live in other cluster slots) and announces
-- users who are no longer anywhere in the room.
-- KEYS: presence, users, names. ARGV: room channel, node key prefix, then the dead nodes.
-- With one Redis instance the prefix is given and each node's heartbeat is checked again
-- here, atomically with the removal, so a node that came back meanwhile (and restored its
-- presence) keeps it. In cluster mode the heartbeats live in other slots: it is ''.
local dead = {}
for i = 3, #ARGV do
  if ARGV[2] == '' or redis.call('EXISTS', ARGV[2] .. ARGV[i] .. ':alive') == 0 then
    dead[ARGV[i]] = true
  end
end
local entries = redis.call('HGETALL', KEYS[1])
local removed = 0
for i = 1, #entries, 2 do
  local field, count = entries[i], tonumber(entries[i + 1])
  local sep = string.find(field, '|', 1, true)
  local node, user = string.sub(field, 1, sep - 1), string.sub(field, sep + 1)
  if dead[node] then
    redis.call('HDEL', KEYS[1], field)
    removed = removed + 1
    if redis.call('HINCRBY', KEYS[2], user, -count) <= 0 then
      redis.call('HDEL', KEYS[2], user)
      redis.call('ZREM', KEYS[3], user)
      redis.call(PUB, ARGV[1], 'P|-|' .. user .. '|' .. redis.call('HLEN', KEYS[2]))
    end
  end
end
return removed
