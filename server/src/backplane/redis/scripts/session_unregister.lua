--! allow-oom
-- One session fewer of a user on a node; the node stops routing the user's DMs with its
-- last. KEYS: the user's nodes, the user's sessions per node. ARGV: node.
if redis.call('HINCRBY', KEYS[2], ARGV[1], -1) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('SREM', KEYS[1], ARGV[1])
end
return 1
