-- Write one session's state and new history entries, if this node still owns it.
-- KEYS: s, h, idx. ARGV: me, ttl, limit, full, score, id, nfields, fields..., entries...
-- Returns 0 (another node owns it), 1 (written) or 2 (the hash was missing: resync needed).
local node = redis.call('HGET', KEYS[1], 'node')
if node and node ~= ARGV[1] then return 0 end
local nf = tonumber(ARGV[7])
local first = 8
for i = first, first + 2 * nf - 1, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
local e = first + 2 * nf
if ARGV[4] == '1' then redis.call('DEL', KEYS[2]) end
if #ARGV >= e then
  for j = e, #ARGV, 500 do
    redis.call('RPUSH', KEYS[2], unpack(ARGV, j, math.min(j + 499, #ARGV)))
  end
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[6])
-- The user's set of sessions (sb:u:{user}): kept as long as one of its sessions is.
local user = redis.call('HGET', KEYS[1], 'user_id')
if user and user ~= '' then
  redis.call('SADD', 'sb:u:' .. user, ARGV[6])
  redis.call('EXPIRE', 'sb:u:' .. user, ARGV[2])
end
if (not node) and ARGV[4] ~= '1' then return 2 end
return 1
