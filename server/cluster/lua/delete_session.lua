-- Forget a session, if this node owns it. KEYS: s, h, idx. ARGV: me, id.
local node = redis.call('HGET', KEYS[1], 'node')
if node and node ~= ARGV[1] then return 0 end
local user = redis.call('HGET', KEYS[1], 'user_id')
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
if user and user ~= '' then redis.call('SREM', 'sb:u:' .. user, ARGV[2]) end
return 1
