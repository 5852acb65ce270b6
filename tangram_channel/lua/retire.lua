-- At shutdown, after this node's last writes: leave the node zset only if every entry
-- was withdrawn (no topic left in the node's set); otherwise stay, silent, so the
-- survivors reap what is left once the node times out.
-- KEYS: 1 node zset, 2 this node's topic set. ARGV: 1 this node.
-- Returns 1 if it left (or was never there), 0 if it stays.
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
