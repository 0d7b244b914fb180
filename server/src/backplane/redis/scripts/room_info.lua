-- A room's epoch, head and member count for the server API, without creating the room.
-- KEYS: meta, users. Reply: {} when the room does not exist, else epoch, head, members.
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'head')
if not meta[1] then return {} end
return {meta[1], meta[2] or '0', tostring(redis.call('HLEN', KEYS[2]))}
