-- One more session of a user on a node in a room; announces the user's arrival with the
-- room's member count. KEYS: presence, users, names. ARGV: node, user, room channel.
redis.call('HINCRBY', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 1)
if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then
  redis.call('ZADD', KEYS[3], 0, ARGV[2])
  redis.call(PUB, ARGV[3], 'P|+|' .. ARGV[2] .. '|' .. redis.call('HLEN', KEYS[2]))
end
return 1
