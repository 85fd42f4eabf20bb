-- Broadcasts written once: each body under sb:m:<message id>, and in the history of each
-- recipient session this node owns a reference to it: "2 <message id>" (one string per
-- broadcast, the same for every recipient: nothing is formatted per recipient), except the
-- last reference this call appends to a history, "3 <seq> <message id>" (an earlier one's seq
-- is one less than the next server frame's: server.cluster.shared.history_seqs).
-- ARGV: me, limit, keep_max, ttl, then per broadcast: message id, body (pack_body), ids (the
-- recipients' client ids, separated by spaces; "" = the same recipients as the broadcast
-- before), seqs (their seqs in the same order, each a little-endian 64-bit integer: packing
-- them costs the node next to nothing; "" when the next broadcast has the same recipients:
-- only the last seq a session gets in this call is read).
--
-- Why it is shaped this way (the fast path: a burst of broadcasts to the same audience, i.e.
-- to everyone or to one channel): consecutive broadcasts with the same recipients form a
-- "run", whose references are one shared Lua table built once per broadcast. Per recipient
-- session Redis then does one HGET (still the owner?), one string.format (the anchored last
-- reference) and one RPUSH of the run's table: no Lua work per (recipient x broadcast) beyond
-- what RPUSH itself does with each element (measured at 20 broadcasts per call: ~0.5 us of
-- Redis time per reference, against ~0.9-1.0 us when every reference was appended to a
-- per-session table; docs/CAPACITY.md, "What each change bought").
-- A session in several runs of one call (broadcasts to overlapping audiences) gets its
-- references concatenated, in order, still with one RPUSH.
-- The list is trimmed back to `limit` once it passes keep_max (amortised: one LTRIM per
-- keep_max - limit refs): one element per reference, so trimming by count stays exact.
-- Returns the sessions not written, as id, code pairs: 0 (another node owns it), 2 (no hash).
-- Keys are derived from the ids: one Redis primary (or one call per shard of sessions).
local me, limit, keep_max, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local order = {}    -- client ids, first seen first
local last = {}     -- client id -> the last run it is in
local at = {}       -- client id -> where its seq is in that run's seqs
local earlier = {}  -- client id -> the runs before its last one, when it is in several (rare)
local run
local i = 5
while i <= #ARGV do
  local mid, ids, seqs = ARGV[i], ARGV[i + 2], ARGV[i + 3]
  redis.call('SET', 'sb:m:' .. mid, ARGV[i + 1], 'EX', ttl)
  i = i + 4
  if ids ~= '' then  -- new recipients: a new run; split them once
    run = {refs = {}, n = 0}
    local ip, ni, sp = 1, #ids, 1
    while ip <= ni do
      local ie = string.find(ids, ' ', ip, true) or (ni + 1)
      local id = string.sub(ids, ip, ie - 1)
      ip = ie + 1
      local prev = last[id]
      if prev == nil then
        order[#order + 1] = id
      else
        local runs = earlier[id]
        if runs == nil then
          runs = {}
          earlier[id] = runs
        end
        runs[#runs + 1] = prev
      end
      last[id], at[id] = run, sp
      sp = sp + 8
    end
  end
  local n = run.n + 1
  run.refs[n], run.n, run.mid = '2 ' .. mid, n, mid
  if seqs ~= '' then run.seqs = seqs end
end

local function push(hk, refs, count)
  local n = 0
  for j = 1, count, 4000 do
    n = redis.call('RPUSH', hk, unpack(refs, j, math.min(j + 3999, count)))
  end
  return n
end

local out = {}
for _, id in ipairs(order) do
  local node = redis.call('HGET', 'sb:s:' .. id, 'node')
  if node == me then
    local hk, r = 'sb:h:' .. id, last[id]
    local refs, count = r.refs, r.n
    local bare = refs[count]
    local anchored = string.format('3 %d %s', struct.unpack('<i8', r.seqs, at[id]), r.mid)
    local runs = earlier[id]
    if runs ~= nil then  -- several runs: its own table, in order
      local all = {}
      for _, e in ipairs(runs) do
        for j = 1, e.n do all[#all + 1] = e.refs[j] end
      end
      for j = 1, count - 1 do all[#all + 1] = refs[j] end
      refs, count = all, #all + 1
    end
    refs[count] = anchored  -- the run's own table: put back below, other sessions share it
    local n = push(hk, refs, count)
    refs[count] = bare
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
