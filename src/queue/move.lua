-- Finish an entry: complete it, or dead-letter it; atomically with its ack.
-- KEYS[1] tasks stream   KEYS[2] target stream (the dead stream)
-- KEYS[3] results stream KEYS[4] results index (task id -> results entry id)
-- ARGV[1] group  ARGV[2] entry id  ARGV[3] owner ('' = any consumer)
-- ARGV[4] target record ('' = write none)  ARGV[5] task id ('' = unknown)
-- ARGV[6] result record ('' = none; written only if the index has none)
-- ARGV[7] '1' = also copy the entry's own fields into the target record as
--         `orig.<name>` (at most 1000 pairs), server-side: for entries the
--         client did not carry (over the size limit, field names not UTF-8).
-- Returns 1 moved, 0 not pending, -1 pending for another consumer.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 then return 0 end
if ARGV[3] ~= '' and p[1][2] ~= ARGV[3] then return -1 end
if ARGV[6] ~= '' and ARGV[5] ~= '' and redis.call('HEXISTS', KEYS[4], ARGV[5]) == 0 then
  local rid = redis.call('XADD', KEYS[3], '*', 'data', ARGV[6])
  redis.call('HSET', KEYS[4], ARGV[5], rid)
end
if ARGV[4] ~= '' then
  local rec = {'data', ARGV[4]}
  if ARGV[7] == '1' then
    local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
    local f = e[1] and e[1][2]
    if f then
      for i = 1, math.min(#f, 2000), 2 do
        rec[#rec + 1] = 'orig.' .. f[i]
        rec[#rec + 1] = f[i + 1]
      end
    end
  end
  redis.call('XADD', KEYS[2], '*', unpack(rec))
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
