-- Record joins and leaves in order. ARGV: per change kind ('j' or 'l'), channel, client id,
-- user id ('' = anonymous). Returns two integers per change: changed (1: a join of a
-- non-member or a leave of a member; 0: nothing changed) and edge (1: the channel's first
-- member joined, or its last left). sb:pch lists the channels that have members.
local out = {}
for i = 1, #ARGV, 4 do
  local channel, member = ARGV[i + 1], ARGV[i + 2]
  local key = 'sb:p:' .. channel
  local changed, edge = 0, 0
  if ARGV[i] == 'j' then
    changed = redis.call('HSETNX', key, member, ARGV[i + 3])
    if changed == 1 and redis.call('HLEN', key) == 1 then
      edge = 1
      redis.call('SADD', 'sb:pch', channel)
    end
  else
    changed = redis.call('HDEL', key, member)
    if changed == 1 and redis.call('EXISTS', key) == 0 then
      edge = 1
      redis.call('SREM', 'sb:pch', channel)
    end
  end
  out[#out + 1] = changed
  out[#out + 1] = edge
end
return out
