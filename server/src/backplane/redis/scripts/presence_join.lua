-- One more session of a user on a node in a room; announces the user's arrival.
-- KEYS: presence, users. ARGV: node, user, room channel.
redis.call('HINCRBY', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 1)
if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then
  redis.call(PUB, ARGV[3], 'P|+|' .. ARGV[2])
end
return 1
