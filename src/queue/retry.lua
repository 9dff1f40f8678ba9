-- Re-queue a copy of a failed task, atomically with the original's ack.
-- KEYS[1] tasks stream  KEYS[2] delayed set
-- ARGV[1] group  ARGV[2] entry id  ARGV[3] owner ('' = any consumer)
-- ARGV[4] task data of the copy  ARGV[5] delay in ms
-- With a delay the copy goes to the delayed set, scored by its due time
-- (Redis TIME + delay, in ms), as `<entry id> <data>` (the unique id keeps
-- equal task documents apart); without, to the end of the stream.
-- Returns 1 moved, 0 not pending, -1 pending for another consumer.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 then return 0 end
if ARGV[3] ~= '' and p[1][2] ~= ARGV[3] then return -1 end
local delay = tonumber(ARGV[5])
if delay > 0 then
  local t = redis.call('TIME')
  local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + delay
  redis.call('ZADD', KEYS[2], due, ARGV[2] .. ' ' .. ARGV[4])
else
  redis.call('XADD', KEYS[1], '*', 'data', ARGV[4])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
