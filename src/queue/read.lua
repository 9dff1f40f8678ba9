-- Read entries without ever sending an oversized one to the client.
-- KEYS[1] the stream
-- ARGV[1] byte limit: an entry whose field names and values add up to more
--         is returned with its size instead of its data
-- ARGV[2] most entries
-- ARGV[3] 'range': ARGV[4] start id, ARGV[5] end id (XRANGE)
--         'group': ARGV[4] group, ARGV[5] consumer, ARGV[6] '>' (new, no
--         blocking) or '0' (the consumer's own pending entries)
-- Returns, per entry: {id, field count, {first 64 field names}, data}
-- where data is the `data` field's value, or false if there is none, or the
-- entry's size in bytes (an integer) when it is over the limit. Field names
-- come back as raw bytes (they need not be UTF-8).
local limit = tonumber(ARGV[1])
local entries
if ARGV[3] == 'range' then
  entries = redis.call('XRANGE', KEYS[1], ARGV[4], ARGV[5], 'COUNT', ARGV[2])
else
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[4], ARGV[5], 'COUNT', ARGV[2],
    'STREAMS', KEYS[1], ARGV[6])
  entries = (r and r[1] and r[1][2]) or {}
end
local out = {}
for i, e in ipairs(entries) do
  local f = e[2]
  local names, size, data = {}, 0, false
  if f then
    for j = 1, #f, 2 do
      size = size + #f[j] + #f[j + 1]
      if #names < 64 then names[#names + 1] = f[j] end
      if data == false and f[j] == 'data' then data = f[j + 1] end
    end
  else
    f = {}
  end
  if size > limit then data = size end
  out[i] = {e[1], #f / 2, names, data}
end
return out
