-- Claim a user's one session for a node (docs/cluster.md).
-- KEYS: 1 gamed:session:UID ("node epoch")
-- ARGV: 1 node, 2 "" for a new session, or the epoch of a session being re-registered
-- Returns {previous node or "", epoch} for a new session (the caller tells the previous
-- node to close its connection); when re-registering {"kept", epoch}, or {"lost", node}
-- when another node holds a newer session of the user.
local node = ARGV[1]
local old = redis.call('GET', KEYS[1])
local oldnode, oldepoch = '', 0
if old then
  local sp = string.find(old, ' ', 1, true)
  oldnode, oldepoch = string.sub(old, 1, sp - 1), tonumber(string.sub(old, sp + 1))
end
if ARGV[2] ~= '' then
  if old and oldnode ~= node and oldepoch > tonumber(ARGV[2]) then return {'lost', oldnode} end
  redis.call('SET', KEYS[1], node .. ' ' .. ARGV[2])
  return {'kept', ARGV[2]}
end
local t = redis.call('TIME')  -- microseconds: epochs grow across Redis restarts too
local epoch = tonumber(t[1]) * 1000000 + tonumber(t[2])
if epoch <= oldepoch then epoch = oldepoch + 1 end
local text = string.format('%.0f', epoch)
redis.call('SET', KEYS[1], node .. ' ' .. text)
return {oldnode, text}
