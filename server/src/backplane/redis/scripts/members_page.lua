-- A page of a room's members by name, after a name ('' for the first page), and how many
-- members it has. KEYS: users, names. ARGV: after, most names.
-- Reply: count, then the names.
local from = '-'
if ARGV[1] ~= '' then from = '(' .. ARGV[1] end
local names = redis.call('ZRANGE', KEYS[2], from, '+', 'BYLEX', 'LIMIT', 0, ARGV[2])
local out = {tostring(redis.call('HLEN', KEYS[1]))}
for _, n in ipairs(names) do table.insert(out, n) end
return out
