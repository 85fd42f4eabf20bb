-- The frequent write, for many sessions in one call: counters and new history entries only
-- (static fields untouched). ARGV: me, limit, ttl, then per session: id, seq, messages_in,
-- messages_out, last_activity, history_size, n, entries (n entries concatenated, each as
-- "<length>:<bytes>", so a flush costs a few arguments per session, not one per frame).
-- Returns one code per session: 0 (another node owns it), 1 (written), 2 (hash missing:
-- resync needed). Keys are derived from the ids (sb:s: / sb:h:): a single Redis (or a
-- primary behind Sentinel), not Redis Cluster.
local me, limit, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local out = {}
local i = 4
while i <= #ARGV do
  local id, n, blob = ARGV[i], tonumber(ARGV[i + 6]), ARGV[i + 7]
  local sk, hk = 'sb:s:' .. id, 'sb:h:' .. id
  local node = redis.call('HGET', sk, 'node')
  local r = 1
  if not node then
    r = 2
  elseif node ~= me then
    r = 0
  else
    redis.call('HSET', sk, 'seq', ARGV[i + 1], 'messages_in', ARGV[i + 2],
               'messages_out', ARGV[i + 3], 'last_activity', ARGV[i + 4],
               'history_size', ARGV[i + 5])
    if n > 0 then
      local items, pos = {}, 1
      for _ = 1, n do
        local colon = string.find(blob, ':', pos, true)
        local len = tonumber(string.sub(blob, pos, colon - 1))
        items[#items + 1] = string.sub(blob, colon + 1, colon + len)
        pos = colon + len + 1
      end
      for j = 1, n, 500 do
        redis.call('RPUSH', hk, unpack(items, j, math.min(j + 499, n)))
      end
      -- Keep what the owner's registry keeps (HISTORY_LIMIT frames and HISTORY_BYTES bytes):
      -- its history_size, never more than the frame limit.
      redis.call('LTRIM', hk, -math.min(limit, tonumber(ARGV[i + 5])), -1)
      if redis.call('TTL', hk) < 0 then redis.call('EXPIRE', hk, ttl) end
    end
  end
  out[#out + 1] = r
  i = i + 8
end
return out
