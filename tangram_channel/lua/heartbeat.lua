-- Beat for this node, then withdraw every node silent for longer than the timeout.
-- KEYS: 1 node zset, 2 channel set. ARGV: 1 this node, 2 timeout in ms, 3 key prefix.
-- Returns a flat list: for each topic of a withdrawn node, {topic, vanished (1 if its
-- last entry went), withdrawn fields and values as one list}; then the channel list,
-- then node_was_unknown: 1 if this node was not in the zset (first beat, or reaped by others
-- while it was stalled).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node_was_unknown = redis.call('ZADD', KEYS[1], now, ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
local out = {}
for _, node in ipairs(dead) do
  redis.call('ZREM', KEYS[1], node)
  local nodekey = ARGV[3] .. 'node:' .. node
  local mark = node .. '\n'
  for _, topic in ipairs(redis.call('SMEMBERS', nodekey)) do
    local hash = ARGV[3] .. 'presence:' .. topic
    local entries = redis.call('HGETALL', hash)
    local withdrawn = {}
    for j = 1, #entries, 2 do
      if string.sub(entries[j + 1], 1, #mark) == mark then
        redis.call('HDEL', hash, entries[j])
        table.insert(withdrawn, entries[j])
        table.insert(withdrawn, entries[j + 1])
      end
    end
    local vanished = 0
    if #withdrawn > 0 and redis.call('HLEN', hash) == 0 then
      vanished = redis.call('SREM', KEYS[2], topic)
    end
    table.insert(out, topic)
    table.insert(out, vanished)
    table.insert(out, withdrawn)
  end
  redis.call('DEL', nodekey)
end
table.insert(out, redis.call('SMEMBERS', KEYS[2]))
table.insert(out, node_was_unknown)
return out
