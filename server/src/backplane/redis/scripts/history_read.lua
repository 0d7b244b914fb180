-- The server API's history read: entries after an offset, from what history still holds.
-- KEYS: meta, log. ARGV: after, most entries, history cutoff ms.
-- Reply: {} when the room does not exist, else epoch, head, then (offset, from, body, ts)*.
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'head')
if not meta[1] then return {} end
local out = {meta[1], meta[2] or '0'}
-- Nothing comes after the largest offset (and '(0-<u64 max>' is no valid range start).
if ARGV[1] == '18446744073709551615' then return out end
local entries = redis.call('XRANGE', KEYS[2], '(0-' .. ARGV[1], '+', 'COUNT', ARGV[2])
for _, e in ipairs(entries) do
  if tonumber(e[2][6]) >= tonumber(ARGV[3]) then
    table.insert(out, string.sub(e[1], 3))
    table.insert(out, e[2][2])
    table.insert(out, e[2][4])
    table.insert(out, e[2][6])
  end
end
return out
