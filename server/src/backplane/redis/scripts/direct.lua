-- Single-instance mode: publishes a direct message (or the application's command) to
-- every live node holding the user
-- and forgets dead nodes. Returns how many nodes' pub/sub connections received it
-- (PUBLISH's count), not how many are alive: a node cut from Redis keeps its alive key
-- until it expires, and a DM counted for it would be acknowledged and never delivered.
-- KEYS: the user's nodes. ARGV: node key prefix, payload ('D|user|frame' or
-- 'C|user|command').
local nodes = redis.call('SMEMBERS', KEYS[1])
local reached = 0
for _, node in ipairs(nodes) do
  if redis.call('EXISTS', ARGV[1] .. node .. ':alive') == 1 then
    reached = reached + redis.call(PUB, ARGV[1] .. node, ARGV[2])
  else
    redis.call('SREM', KEYS[1], node)
  end
end
return reached
