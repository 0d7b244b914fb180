-- Admits a room into the cluster-wide room index (sorted by last activity) unless the
-- index is full and the room new to it; records the room's history bytes when known. A
-- report (bytes given) is of a room that exists: it is admitted even into a full index,
-- so its bytes always count (the sweeper brings the count back under the cap).
-- KEYS: index, bytes. ARGV: room, now ms, max rooms, the room's bytes ('' if unknown).
-- Reply: 1 admitted (already in the index), 2 admitted (new to it), 0 refused (full).
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not known and ARGV[4] == '' and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], ARGV[1], ARGV[4]) end
if known then return 1 end
return 2
