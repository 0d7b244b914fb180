--! allow-oom
-- A node's heartbeat. It must land even when Redis is at `maxmemory` (a refused
-- heartbeat would have the other nodes sweep this node's presence and DM routes).
-- KEYS: the node's alive key. ARGV: TTL s.
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
return 1
