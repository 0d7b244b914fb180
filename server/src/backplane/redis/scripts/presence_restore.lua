-- Re-asserts one node's local presence in a room (after Redis lost data) without
-- double-counting what is still there.
-- KEYS: presence, users, names. ARGV: node, user, sessions, room channel.
local field = ARGV[1] .. '|' .. ARGV[2]
local have = tonumber(redis.call('HGET', KEYS[1], field) or '0')
local want = tonumber(ARGV[3])
if have == want then return 0 end
redis.call('HSET', KEYS[1], field, want)
local before = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
redis.call('HINCRBY', KEYS[2], ARGV[2], want - have)
if before <= 0 and want > 0 then
  redis.call('ZADD', KEYS[3], 0, ARGV[2])
  redis.call(PUB, ARGV[4], 'P|+|' .. ARGV[2] .. '|' .. redis.call('HLEN', KEYS[2]))
end
return 1
