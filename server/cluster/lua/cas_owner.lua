-- Take ownership from `expected` (a dead or absent owner). KEYS: s. ARGV: expected, me.
-- Returns 1 (taken), -1 (no such session) or the current owner (someone else has it).
local node = redis.call('HGET', KEYS[1], 'node')
if not node then return -1 end
if node ~= ARGV[1] and node ~= ARGV[2] then return node end
redis.call('HSET', KEYS[1], 'node', ARGV[2], 'connected', '0')
return 1
