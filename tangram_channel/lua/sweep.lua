-- Withdraw orphans: entries whose node is not in the node zset at all (its record was
-- removed while some of its entries could not be), a few at a time, so the cost of a
-- beat stays bounded however big the channels grow. An entry is only written by
-- update.lua, which registers its node first, in the same script: a live node's entry
-- never looks like an orphan.
-- KEYS: 1 node zset, 2 channel set. ARGV: 1 key prefix, 2 budget (entries to look at),
-- 3 the HSCAN cursor in the first topic, then topics.
-- Returns a flat list: for each topic looked at, {topic, vanished, withdrawn fields and
-- values as one list}; then how many topics were finished, the cursor in the next one,
-- and the channel list if a channel vanished (else empty).
local budget = tonumber(ARGV[2])
local cursor = ARGV[3]
local live = {}
local out = {}
local finished, vanished_any = 0, 0
for t = 4, #ARGV do
  if budget <= 0 then break end
  local topic = ARGV[t]
  local hash = ARGV[1] .. 'presence:' .. topic
  local withdrawn = {}
  repeat
    local scan = redis.call('HSCAN', hash, cursor, 'COUNT', math.max(1, math.floor(budget)))
    cursor = scan[1]
    local entries = scan[2]
    budget = budget - 1 - #entries / 2
    for j = 1, #entries, 2 do
      local value = entries[j + 1]
      local cut = string.find(value, '\n', 1, true)
      if cut then
        local node = string.sub(value, 1, cut - 1)
        if live[node] == nil then live[node] = redis.call('ZSCORE', KEYS[1], node) ~= false end
        if not live[node] then
          redis.call('HDEL', hash, entries[j])
          table.insert(withdrawn, entries[j])
          table.insert(withdrawn, value)
        end
      end
    end
  until cursor == '0' or budget <= 0
  local vanished = 0
  if #withdrawn > 0 and redis.call('HLEN', hash) == 0 then
    vanished = redis.call('SREM', KEYS[2], topic)
    vanished_any = vanished_any + vanished
  end
  table.insert(out, topic)
  table.insert(out, vanished)
  table.insert(out, withdrawn)
  if cursor ~= '0' then break end
  finished = finished + 1
end
table.insert(out, finished)
table.insert(out, cursor)
local channels = {}
if vanished_any > 0 then channels = redis.call('SMEMBERS', KEYS[2]) end
table.insert(out, channels)
return out
