-- Broadcasts written once: each body under sb:m:<message id>, and in the history of each
-- recipient session this node owns a reference to it: "2 <message id>" (one string per
-- broadcast, the same for every recipient: nothing is formatted per recipient), except the
-- last reference this call appends to a history, "3 <seq> <message id>" (an earlier one's seq
-- is one less than the next server frame's: server.cluster.shared.history_seqs).
-- ARGV: me, limit, keep_max, ttl, then per broadcast: message id, body (pack_body), ids (the
-- recipients' client ids, separated by spaces; "" = the same recipients as the broadcast
-- before: broadcasts to everyone are parsed once per call), seqs (their seqs in the same
-- order, each a little-endian 64-bit integer: packing them costs the node next to nothing;
-- only the last one per session is read).
-- One session's references from several broadcasts are pushed by one RPUSH, so under load
-- (more broadcasts per flush) Redis does fewer commands per reference. The list is trimmed
-- back to `limit` once it passes keep_max (amortised: one LTRIM per keep_max - limit refs).
-- Returns the sessions not written, as id, code pairs: 0 (another node owns it), 2 (no hash).
-- Keys are derived from the ids: one Redis primary (or one call per shard of sessions).
local me, limit, keep_max, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local groups, order, audience = {}, {}, {}
local i = 5
while i <= #ARGV do
  local mid, ids, seqs = ARGV[i], ARGV[i + 2], ARGV[i + 3]
  redis.call('SET', 'sb:m:' .. mid, ARGV[i + 1], 'EX', ttl)
  i = i + 4
  if ids ~= '' then  -- new recipients: split them once, find (or start) each one's group
    local ip, ni = 1, #ids
    audience = {}
    while ip <= ni do
      local ie = string.find(ids, ' ', ip, true) or (ni + 1)
      local id = string.sub(ids, ip, ie - 1)
      ip = ie + 1
      local refs = groups[id]
      if refs == nil then
        refs = {}
        groups[id] = refs
        order[#order + 1] = id
      end
      audience[#audience + 1] = refs
    end
  end
  local ref, sp = '2 ' .. mid, 1
  for j = 1, #audience do
    local refs = audience[j]
    refs[#refs + 1] = ref
    refs.mid, refs.seqs, refs.at = mid, seqs, sp  -- where this session's last seq is
    sp = sp + 8
  end
end
local out = {}
for _, id in ipairs(order) do
  local node = redis.call('HGET', 'sb:s:' .. id, 'node')
  if node == me then
    local hk, refs = 'sb:h:' .. id, groups[id]
    local count = #refs
    refs[count] = string.format('3 %d %s', struct.unpack('<i8', refs.seqs, refs.at), refs.mid)
    local n = 0
    for j = 1, count, 4000 do
      n = redis.call('RPUSH', hk, unpack(refs, j, math.min(j + 3999, count)))
    end
    if n == count then
      redis.call('EXPIRE', hk, ttl)
    elseif n > keep_max then
      redis.call('LTRIM', hk, -limit, -1)
    end
  else
    out[#out + 1] = id
    out[#out + 1] = node and 0 or 2
  end
end
return out
