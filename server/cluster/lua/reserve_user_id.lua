-- Reserve a client id for a new session of a user, if the user holds fewer than `max`
-- sessions anywhere. KEYS: s, idx, u. ARGV: me, ttl, id, score, user, max.
-- Returns 1 (reserved), 0 (the id is taken) or -1 (the user is at `max`: nothing reserved).
-- Members of u whose session is gone (expired, its node died) are dropped on the way.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local live = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if redis.call('EXISTS', 'sb:s:' .. member) == 1 then
    live = live + 1
  else
    redis.call('SREM', KEYS[3], member)
  end
end
if live >= tonumber(ARGV[6]) then return -1 end
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'connected', '0', 'seq', '0', 'user_id', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[2])
return 1
