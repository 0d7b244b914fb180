-- Starts a new epoch for a room whose history went back in time (a node received an
-- offset it had already delivered), unless another node already did.
-- KEYS: meta, log. ARGV: the epoch that went back, the new epoch.
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'head', 0, 'bytes', 0)
return 1
