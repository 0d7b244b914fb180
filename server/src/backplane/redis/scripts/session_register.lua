-- One more session of a user on a node, unless the user already has the most sessions
-- allowed over the cluster. Counts per node, so a dead node's sessions can be forgotten.
-- With the events stream given, the user's first session in the cluster records a
-- `user.connected` event in the same step.
-- KEYS: the user's nodes (DM routing), the user's sessions per node, optionally the
-- events stream. ARGV: node, most sessions (0: no cap), node key prefix ('' in cluster
-- mode, where other nodes' heartbeats live in other slots and the caller checks them),
-- then with the stream: the user, the stream's most entries, now ms.
-- Reply: {1} when registered (and {1, 1} when an undelivered event was dropped to make
-- room); {0, other nodes counted...} when at the cap.
local nodes, sessions, node = KEYS[1], KEYS[2], ARGV[1]
local max, prefix = tonumber(ARGV[2]), ARGV[3]
if max > 0 then
  local total = 0
  local others = {}
  local counts = redis.call('HGETALL', sessions)
  for i = 1, #counts, 2 do
    local other, n = counts[i], tonumber(counts[i + 1])
    if other ~= node and prefix ~= '' and redis.call('EXISTS', prefix .. other .. ':alive') == 0 then
      redis.call('HDEL', sessions, other)
      redis.call('SREM', nodes, other)
    else
      total = total + n
      if other ~= node then table.insert(others, other) end
    end
  end
  if total >= max then
    table.insert(others, 1, 0)
    return others
  end
end
redis.call('HINCRBY', sessions, node, 1)
redis.call('SADD', nodes, node)
if KEYS[3] then
  local total = 0
  for _, n in ipairs(redis.call('HVALS', sessions)) do total = total + tonumber(n) end
  if total == 1 then
    local dropped = 0
    if redis.call('XLEN', KEYS[3]) >= tonumber(ARGV[5]) then dropped = 1 end
    redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[5], '*', 'k', 'user.connected', 'u', ARGV[4], 't', ARGV[6])
    return {1, dropped}
  end
end
return {1}
