-- Every channel with its agents.
-- KEYS: 1 channel set. ARGV: 1 key prefix.
-- Returns a flat list: channel, its phx_refs, channel, its phx_refs, ...
local out = {}
for _, topic in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  table.insert(out, topic)
  table.insert(out, redis.call('HKEYS', ARGV[1] .. 'presence:' .. topic))
end
return out
