-- Keep one frame in a channel's history. KEYS: list (sb:ch:{c}), its byte count
-- (sb:chb:{c}), the index of channels with history (sb:chidx). ARGV: frame, keep (frames),
-- max bytes, ttl, now, max channels, channel. Returns {frames dropped for bytes, rings
-- dropped for the channel cap}.
local keep, max_bytes = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('RPUSH', KEYS[1], ARGV[1])
local total = redis.call('INCRBY', KEYS[2], #ARGV[1])
local by_bytes = 0
local length = redis.call('LLEN', KEYS[1])
while length > 1 and (length > keep or total > max_bytes) do
  if length <= keep then by_bytes = by_bytes + 1 end
  total = redis.call('DECRBY', KEYS[2], #redis.call('LPOP', KEYS[1]))
  length = length - 1
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[7])
local rings = 0
while redis.call('ZCARD', KEYS[3]) > tonumber(ARGV[6]) do
  local oldest = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  redis.call('ZREM', KEYS[3], oldest)
  redis.call('DEL', 'sb:ch:' .. oldest, 'sb:chb:' .. oldest)
  rings = rings + 1
end
return {by_bytes, rings}
