-- Find nodes whose lease ran out and take them off the index, once (docs/cluster.md).
-- KEYS: 1 gamed:nodes   ARGV: 1 "gamed:node:" (lease key prefix), 2 most to return
-- Returns the dead node ids; the caller (the one survivor that got each) cleans up.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = {}
for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[2])) do
  if redis.call('EXISTS', ARGV[1] .. n) == 0 then
    redis.call('ZREM', KEYS[1], n)
    dead[#dead + 1] = n
  end
end
return dead
