-- Move one dead letter back to the tasks stream and forget its final error
-- result, so the retry's outcome becomes the final one.
-- KEYS[1] dead stream  KEYS[2] tasks stream  KEYS[3] results index
-- ARGV[1] dead entry id  ARGV[2] task data  ARGV[3] task id
-- Returns the new tasks entry id, or nil if the dead letter is gone.
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return false end
redis.call('HDEL', KEYS[3], ARGV[3])
return redis.call('XADD', KEYS[2], '*', 'data', ARGV[2])
