-- End a user's session if the node (and epoch, when given) still holds it.
-- KEYS: 1 gamed:session:UID   ARGV: 1 node, 2 epoch or "" (any of the node's)
-- Returns 1 if released.
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local sp = string.find(cur, ' ', 1, true)
if string.sub(cur, 1, sp - 1) ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' and string.sub(cur, sp + 1) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1
