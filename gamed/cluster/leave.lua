-- Give back a user's seat in one room, if this node holds it (docs/cluster.md).
-- KEYS: 1 members, 2 nodes, 3 on:NODE, 4 gamed:rooms (as join.lua)
-- ARGV: 1 uid, 2 node, 3 room id
-- Returns the room's member count after it (0: the room's keys are gone).
local uid, node = ARGV[1], ARGV[2]
local cur = redis.call('HGET', KEYS[1], uid)
if cur and string.sub(cur, 1, #node + 1) == node .. '\t' then
  redis.call('HDEL', KEYS[1], uid)
  redis.call('SREM', KEYS[3], uid)
  if redis.call('HINCRBY', KEYS[2], node, -1) <= 0 then redis.call('HDEL', KEYS[2], node) end
end
local count = redis.call('HLEN', KEYS[1])
if count == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[4], ARGV[3])
else
  redis.call('ZADD', KEYS[4], count, ARGV[3])
end
return count
