-- A topic's presence writes of one flush, with what they changed.
-- KEYS: 1 presence hash, 2 this node's topic set, 3 channel set, 4 node zset, 5 the admin topic's presence hash.
-- ARGV: 1 topic; 2 "state" (also return the hash's entries), "forget" (this node has no
--   entry left in the topic: drop the topic from the node's topic set, in this script so
--   no later write can cross it) or "-"; 3 this node; then phx_ref/value pairs to add,
--   "|", and phx_refs to remove.
-- Returns {appeared, vanished, channels, entries, node_was_unknown, admins}:
--   appeared, vanished: 1 if the channel got its first entry, or lost its last;
--   channels: every channel, only if it appeared or vanished and an admin is joined
--     anywhere (the list grows with the channels: only worth reading for an admin);
--   entries: the hash's fields and values, flat, if ARGV[2] is "state", else empty;
--   node_was_unknown: 1 if this node was not in the node zset (checked only when adding: a node is
--     registered with its first entry, so one that dies before its first heartbeat is
--     still reaped);
--   admins: 1 if any admin is joined anywhere.
local node_was_unknown = 0
if ARGV[4] ~= '|' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  node_was_unknown = redis.call('ZADD', KEYS[4], 'NX', now, ARGV[3])
end
local before = redis.call('HLEN', KEYS[1])
local i = 4
while ARGV[i] ~= '|' do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('SADD', KEYS[2], ARGV[1])
  i = i + 2
end
i = i + 1
while i <= #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
  i = i + 1
end
if ARGV[2] == 'forget' then redis.call('SREM', KEYS[2], ARGV[1]) end
local after = redis.call('HLEN', KEYS[1])
local appeared, vanished = 0, 0
if after > 0 then
  if before == 0 then appeared = redis.call('SADD', KEYS[3], ARGV[1]) end
elseif before > 0 then
  vanished = redis.call('SREM', KEYS[3], ARGV[1])
end
local admins = redis.call('EXISTS', KEYS[5])
local channels = {}
-- the channel list grows with the channels: only worth reading for an admin to see
if admins == 1 and (appeared == 1 or vanished == 1) then channels = redis.call('SMEMBERS', KEYS[3]) end
local entries = {}
if ARGV[2] == 'state' then entries = redis.call('HGETALL', KEYS[1]) end
return {appeared, vanished, channels, entries, node_was_unknown, admins}
