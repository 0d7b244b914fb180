-- Records one event for the application (a DM whose recipient has no session).
-- KEYS: the events stream. ARGV: the stream's most entries, then the entry's fields and
-- values. Reply: 1 when an undelivered event was dropped to make room, else 0.
local dropped = 0
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then dropped = 1 end
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', unpack(ARGV, 2))
return dropped
