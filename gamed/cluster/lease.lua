-- Refresh a node's lease and its deadline in the node index (docs/cluster.md).
-- KEYS: 1 gamed:node:NODE, 2 gamed:nodes (zset node -> deadline, ms of Redis time)
-- ARGV: 1 node, 2 token (this process), 3 ttl ms
-- Returns "kept" (the lease was ours), "new" (gone: first start, Redis lost it, or a
-- survivor swept us after a stall: re-register), or "other" (another process uses the id).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = redis.call('GET', KEYS[1])
if old and old ~= ARGV[2] then return 'other' end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
if old then return 'kept' end
return 'new'
