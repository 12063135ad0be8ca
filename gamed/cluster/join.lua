-- Seat a user in one room: the capacity check and the seat in one step (docs/cluster.md).
-- KEYS: 1 gamed:{room:ID}:members (uid -> "node\tnick"), 2 gamed:{room:ID}:nodes (node -> n),
--       3 gamed:{room:ID}:on:NODE (this node's uids), 4 gamed:rooms (listing: room -> count)
-- ARGV: 1 uid, 2 node, 3 nickname, 4 max members, 5 room id, 6 "gamed:{room:ID}:on:" (prefix)
-- Returns {1, count, nodes...} seated, or {0, count} full. nodes: flat node, n pairs.
local uid, node = ARGV[1], ARGV[2]
local cur = redis.call('HGET', KEYS[1], uid)
if cur then
  local old = string.sub(cur, 1, string.find(cur, '\t', 1, true) - 1)
  if old ~= node then
    -- the user's session moved here while its old node still held the seat: move the seat
    redis.call('SREM', ARGV[6] .. old, uid)
    if redis.call('HINCRBY', KEYS[2], old, -1) <= 0 then redis.call('HDEL', KEYS[2], old) end
    redis.call('HINCRBY', KEYS[2], node, 1)
    redis.call('SADD', KEYS[3], uid)
  end
else
  local count = redis.call('HLEN', KEYS[1])
  if count >= tonumber(ARGV[4]) then return {0, count} end
  redis.call('HINCRBY', KEYS[2], node, 1)
  redis.call('SADD', KEYS[3], uid)
end
redis.call('HSET', KEYS[1], uid, node .. '\t' .. ARGV[3])
local count = redis.call('HLEN', KEYS[1])
redis.call('ZADD', KEYS[4], count, ARGV[5])
local reply = {1, count}
local nodes = redis.call('HGETALL', KEYS[2])  -- one entry per node with members here
for i = 1, #nodes do reply[#reply + 1] = nodes[i] end
return reply
