-- The next page of a replay: entries after a position, up to the head the replay started
-- from, while history still holds them whole in the same epoch.
-- KEYS: meta, log. ARGV: epoch, after, upto, most entries, history cutoff ms.
-- Reply: 'gone', or 'ok' then (offset, from, body, ts)*.
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return {'gone'} end
local entries = redis.call('XRANGE', KEYS[2], '(0-' .. ARGV[2], '0-' .. ARGV[3], 'COUNT', ARGV[4])
local first = entries[1]
if not first or first[1] ~= ('0-' .. (tonumber(ARGV[2]) + 1)) or tonumber(first[2][6]) < tonumber(ARGV[5]) then
  return {'gone'}
end
local out = {'ok'}
for _, e in ipairs(entries) do
  table.insert(out, string.sub(e[1], 3))
  table.insert(out, e[2][2])
  table.insert(out, e[2][4])
  table.insert(out, e[2][6])
end
return out
