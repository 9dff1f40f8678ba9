-- Delete a consumer only if it has nothing pending (otherwise its entries
-- would become unclaimable).
-- KEYS[1] tasks stream
-- ARGV[1] group  ARGV[2] consumer
-- Returns -1 if it holds entries, else XGROUP DELCONSUMER's reply.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return -1 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
