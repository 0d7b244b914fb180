-- Counts a room a user brought into the index, in an hour-long window; refuses past the
-- cap. KEYS: the user's count. ARGV: most rooms per window, window s.
-- Reply: 1 counted, 0 over the cap (not counted).
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return 0
end
return 1
