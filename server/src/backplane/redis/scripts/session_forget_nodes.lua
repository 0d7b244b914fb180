-- Cluster mode: forgets a user's sessions and DM route on nodes whose heartbeat the
-- caller found expired. KEYS: the user's nodes, the user's sessions. ARGV: dead nodes.
for i = 1, #ARGV do
  redis.call('HDEL', KEYS[2], ARGV[i])
  redis.call('SREM', KEYS[1], ARGV[i])
end
return #ARGV
