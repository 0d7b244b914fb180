--! allow-oom
-- One session fewer; announces the user's departure, with the room's member count, when
-- it was their last in the room.
-- KEYS: presence, users, names. ARGV: node, user, room channel.
local field = ARGV[1] .. '|' .. ARGV[2]
if not redis.call('HGET', KEYS[1], field) then return 0 end
if redis.call('HINCRBY', KEYS[1], field, -1) <= 0 then redis.call('HDEL', KEYS[1], field) end
if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
  redis.call(PUB, ARGV[3], 'P|-|' .. ARGV[2] .. '|' .. redis.call('HLEN', KEYS[2]))
end
return 1
