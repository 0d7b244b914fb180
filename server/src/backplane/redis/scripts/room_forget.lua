--! allow-oom
-- Forgets a room nobody is in (the cluster-wide room cap): its offsets and history go,
-- so the next message starts a new epoch and a client resuming from the old one is told
-- `recovered: false`. A room with members is kept.
-- KEYS: meta, log, users. Reply: 1 when forgotten, 0 when kept.
if redis.call('HLEN', KEYS[3]) > 0 then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
