--! allow-oom
-- One session fewer of a user on a node; the node stops routing the user's DMs with its
-- last. With the events stream given, the user's last session in the cluster records a
-- `user.disconnected` event in the same step.
-- KEYS: the user's nodes, the user's sessions per node, optionally the events stream.
-- ARGV: node, then with the stream: the user, the stream's most entries, now ms.
-- Reply: 0; with an event recorded 1, or 2 when an undelivered event was dropped to make
-- room for it.
local left = redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
if left <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('SREM', KEYS[1], ARGV[1])
end
if KEYS[3] and left >= 0 and redis.call('HLEN', KEYS[2]) == 0 then
  local dropped = 1
  if redis.call('XLEN', KEYS[3]) >= tonumber(ARGV[3]) then dropped = 2 end
  redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[3], '*', 'k', 'user.disconnected', 'u', ARGV[2], 't', ARGV[4])
  return dropped
end
return 0
