-- One more session of a user on a node, unless the user already has the most sessions
-- allowed over the cluster. Counts per node, so a dead node's sessions can be forgotten.
-- KEYS: the user's nodes (DM routing), the user's sessions per node. ARGV: node, most
-- sessions (0: no cap), node key prefix ('' in cluster mode, where other nodes'
-- heartbeats live in other slots and the caller checks them).
-- Reply: {1} when registered; {0, other nodes counted...} when at the cap.
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
return {1}
