-- Make one node's members of one room exactly the given list (docs/cluster.md): the node
-- re-registering after a Redis restart, or a survivor removing a dead node (empty list).
-- KEYS: 1 members, 2 nodes, 3 on:NODE, 4 gamed:rooms (as join.lua)
-- ARGV: 1 node, 2 room id, then uid, nickname pairs
-- Returns {count, removed, nodes}: removed = flat uid, nickname pairs taken out;
-- nodes = flat node, n pairs. A listed uid seated by another node (a newer session) is
-- left to that node.
local node = ARGV[1]
local keep = {}
for i = 3, #ARGV, 2 do keep[ARGV[i]] = ARGV[i + 1] end
local removed = {}
for _, uid in ipairs(redis.call('SMEMBERS', KEYS[3])) do  -- this node's members only
  if keep[uid] == nil then
    local cur = redis.call('HGET', KEYS[1], uid)
    if cur and string.sub(cur, 1, #node + 1) == node .. '\t' then
      redis.call('HDEL', KEYS[1], uid)
      removed[#removed + 1] = uid
      removed[#removed + 1] = string.sub(cur, #node + 2)
    end
    redis.call('SREM', KEYS[3], uid)
  end
end
local mine = 0
for uid, nick in pairs(keep) do
  local cur = redis.call('HGET', KEYS[1], uid)
  if not cur or string.sub(cur, 1, #node + 1) == node .. '\t' then
    redis.call('HSET', KEYS[1], uid, node .. '\t' .. nick)
    redis.call('SADD', KEYS[3], uid)
    mine = mine + 1
  end
end
if mine > 0 then redis.call('HSET', KEYS[2], node, mine) else redis.call('HDEL', KEYS[2], node) end
local count = redis.call('HLEN', KEYS[1])
if count == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[4], ARGV[2])
else
  redis.call('ZADD', KEYS[4], count, ARGV[2])
end
return {count, removed, redis.call('HGETALL', KEYS[2])}
