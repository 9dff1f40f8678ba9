-- Move due delayed retries to the tasks stream.
-- KEYS[1] delayed set  KEYS[2] tasks stream
-- ARGV[1] most members to move
-- Each XADD goes with its ZREM in this one script, so concurrent promoters
-- never double one. Due times come from Redis TIME. Nothing moves while the
-- tasks stream is missing: an XADD would create it without the group. A
-- member not in the retry script's format goes to the stream whole (a worker
-- dead-letters it with its raw text) rather than blocking the set.
-- Returns how many moved.
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  local sp = string.find(m, ' ', 1, true)
  local data = m
  if sp then data = string.sub(m, sp + 1) end
  redis.call('XADD', KEYS[2], '*', 'data', data)
  redis.call('ZREM', KEYS[1], m)
end
return #due
