-- livedict: every operation of the Redis backend, run atomically by the server.
--
-- `run(KEYS, ARGV)` at the end does one operation. connection.rs loads this file as a function
-- library (Redis 7+: `FCALL`), or else as a script ending in `return run(KEYS, ARGV)`
-- (`EVALSHA`). A library stays loaded between calls, so the state of one call lives in the
-- variables below, and `run` sets each of them first.
--
-- ARGV[1] the operation, ARGV[2] the time in ms since the Unix epoch ('' = the server's clock,
-- read with TIME), ARGV[3] the native-expiry grace in ms; the operation's own arguments follow.
--
-- Layout (see layout.rs): an entry is a string `<base>k:<key>` of format 3: a 33-byte head ('L',
-- then the deadline in ms since the epoch (0: never expires), the sliding TTL in ms (0: a fixed
-- deadline), the last access in ms since the epoch (refreshed at most once a second by reads) and
-- the key's native expiry in ms since the epoch (0: none), as big-endian doubles), then the
-- stored bytes (livedict header + payload). The head has a fixed size so that a read rewrites its
-- fields in place (SETRANGE) without copying the value. Stores of format 2 kept an entry in a
-- hash with fields v, d, s, a: such an entry is still read, and becomes a string when next
-- written.
-- Each entry also has a member `<key>` in its bucket's index `<base>index`, a sorted set scored
-- by deadline ('+inf' for none). A score is never later than its entry's deadline but may be
-- earlier: a write that moves a deadline later (the common case: the same TTL, written again)
-- leaves the score alone, and the sweep, reaching the member early, moves it to the real
-- deadline. So a score
-- after now proves an entry live; a score that has passed proves nothing, and the entry decides.
-- `<base>lock:<key>` holds the token of an update in progress; `<base>ulock:<name>` is a named
-- lock (`try_lock`). A key with a deadline also has a native TTL, so that Redis removes it even
-- when no livedict process runs; a running process sweeps it first, at the deadline, with its
-- value. The native expiry falls between deadline + grace and deadline + 1.5 grace: a write gives
-- deadline + 1.5 grace, and with the server's clock a later write whose deadline leaves the key's
-- native expiry (kept in the head) in that range leaves it as it is (KEEPTTL), which spares Redis
-- a new TTL on most overwrites with the same TTL. With the caller's clock every write gives a
-- new one: the head's expiry would be on that clock, Redis's is on its own.
--
-- Nothing is written before every entry an operation reads has been decoded: an entry that does
-- not decode is an error (the LIVEDICT error code) and is left as it is.

-- The call's operation, time (ms since the epoch), whether that time is the server's, and
-- native-expiry grace (ms).
local op, now, server_time, grace
local ACCESS_GRANULARITY = 1000
-- How long (ms) the sweep leaves an undecodable due entry before it looks at it again.
local UNDECODABLE_REVISIT = 60000

-- Numbers are passed to redis.call as they are: the server writes a whole number below 2^53
-- (every time, deadline and TTL here: MAX_TTL and the grace are capped well below) as its
-- digits. Those returned to the client, which must be text, are formatted, and remembered for
-- the call: a sweep or a clear returns the same deadlines for many keys.
local formatted
local function fmt(n)
  local text = formatted[n]
  if not text then
    text = string.format('%.0f', n)
    formatted[n] = text
  end
  return text
end

local function bad(k, why)
  error({ err = 'LIVEDICT undecodable entry ' .. k .. ': ' .. why })
end

-- Whole numbers in entries stay below 2^53 (doubles hold them exactly).
local WHOLE_LIMIT = 9007199254740992

-- A number field of a hash entry (format 2): digits only ('inf', '1e300' and '0x10' are not).
local function int_field(k, name, text)
  if not text then
    return nil
  end
  local n = string.find(text, '^%d+$') and tonumber(text)
  if not n or n >= WHOLE_LIMIT then
    bad(k, 'field ' .. name .. ' is not a whole number')
  end
  return n
end

-- An entry string's head: 'L', then the deadline, the sliding TTL, the last access and the
-- key's native expiry (all in ms, 0 for none) as big-endian doubles (whole numbers below 2^53),
-- 33 bytes in all; the value follows. Packed (struct), not written as digits: formatting and
-- parsing numbers in Lua cost more than a redis.call (~1 us an entry each way).
local HEAD_LEN = 33
-- Offsets (from 0, for SETRANGE) of the deadline (the other three fields follow) and of the last
-- access.
local D_AT, A_AT = 1, 17

local function head(d, s, a, n)
  return struct.pack('>c1dddd', 'L', d, s, a, n)
end

-- The entry in the string text under data key k. (Checked inline: a call per field cost more
-- than the unpacking.)
local function decode(k, text)
  if #text < HEAD_LEN then
    bad(k, 'not a livedict entry')
  end
  local tag, d, s, a, n = struct.unpack('>c1dddd', text)
  -- Whole numbers in [0, 2^53): a NaN fails every comparison.
  if not (tag == 'L' and d >= 0 and s >= 0 and a >= 0 and n >= 0 and d < WHOLE_LIMIT
      and s < WHOLE_LIMIT and a < WHOLE_LIMIT and n < WHOLE_LIMIT
      and d % 1 + s % 1 + a % 1 + n % 1 == 0) then
    bad(k, 'not a livedict entry')
  end
  return { v = string.sub(text, HEAD_LEN + 1), d = d > 0 and d or nil, s = s, a = a, n = n }
end

-- The entry in the hash under data key k (format 2), or nil.
local function load_hash(k)
  local h = redis.pcall('HMGET', k, 'v', 'd', 's', 'a')
  if h.err then
    bad(k, 'neither a string nor a hash')
  end
  if not h[1] then
    if h[2] or h[3] or h[4] then
      bad(k, 'no value field')
    end
    return nil
  end
  return {
    v = h[1],
    d = int_field(k, 'd', h[2]),
    s = int_field(k, 's', h[3]) or 0,
    a = int_field(k, 'a', h[4]) or 0,
    hash = true,
  }
end

-- The entry under data key k, or nil.
local function load(k)
  local text = redis.pcall('GET', k)
  if type(text) == 'table' then
    if text.err and string.find(text.err, 'WRONGTYPE', 1, true) then
      return load_hash(k)
    end
    error(text)
  end
  if not text then
    return nil
  end
  return decode(k, text)
end

-- The entry under data key k, whose string value (or nil: none, or not a string) a multi-key
-- read (MGET) returned as text. A nil is looked at again: it may be a hash of format 2, or a key
-- of another type that must be refused, never overwritten (in any store, so not only in those
-- upgraded from format 2).
local function loaded(k, text)
  if text then
    return decode(k, text)
  end
  if redis.call('EXISTS', k) == 1 then
    return load(k)
  end
  return nil
end

-- The native expiry of an entry with deadline d whose key's own native expiry is n (nil: none
-- known): n when the time is the server's and n falls within [d + grace, d + 1.5 grace], else a
-- new one; and the TTL to give the key for the new one (nil: the key keeps its own).
local function native(d, n)
  local margin = n and n - d
  if server_time and margin and margin >= grace and margin <= grace + math.floor(grace / 2) then
    return n, nil
  end
  local px = math.max(d - now, 1) + grace + math.floor(grace / 2)
  return now + px, px
end

-- Writes an entry under data key k, whole: value v, deadline d (nil: none), sliding TTL s, last
-- access a, with the native TTL its deadline asks for (none without one); n is the native
-- expiry the key has now (nil: none known). Fields as arguments, not an entry table: a write
-- builds no table.
local function store(k, v, d, s, a, n)
  if not d then
    redis.call('SET', k, head(0, 0, a, 0) .. v)
    return
  end
  local native_at, px = native(d, n)
  local text = head(d, s, a, native_at) .. v
  if px then
    redis.call('SET', k, text, 'PX', px)
  else
    redis.call('SET', k, text, 'KEEPTTL')
  end
end

-- Writes entry e (loaded) under data key k.
local function store_entry(k, e)
  store(k, e.v, e.d, e.s, e.a, e.n)
end

-- Writes the deadline, sliding TTL and last access of entry e (loaded from k) and the native TTL
-- they ask for: in place for a string, whole for a hash of format 2.
-- With `only_later` (a read renewing a sliding deadline, which only moves it later), the key's
-- native TTL is never shortened: an update in progress may have extended it past its lease
-- (lock_read), and the read must not undo that.
local function rewrite_head(k, e, only_later)
  if e.hash then
    store_entry(k, e)
  elseif not e.d then
    redis.call('SETRANGE', k, D_AT, struct.pack('>dddd', 0, 0, e.a, 0))
    redis.call('PERSIST', k)
  else
    local n, px = native(e.d, e.n)
    redis.call('SETRANGE', k, D_AT, struct.pack('>dddd', e.d, e.s, e.a, n))
    if px then
      local current = only_later and redis.call('PTTL', k) or -1
      if current < px then
        redis.call('PEXPIRE', k, px)
      end
    end
  end
end

local function live(e)
  return e ~= nil and (e.d == nil or e.d > now)
end

local function base_of(index)
  return string.sub(index, 1, -6) -- strips 'index'
end

-- Whether a lock is held by someone else than token. Update locks hold a token; the locks of a
-- batch spanning several cluster slots hold 'b:' .. token, and reads wait for those.
local function locked(lock, token)
  local holder = redis.call('GET', lock)
  return holder and holder ~= token
end

local function batch_locked(lock)
  if not lock then
    return false
  end
  local holder = redis.call('GET', lock)
  return holder and string.sub(holder, 1, 2) == 'b:'
end

-- Index updates a batch defers to its end: index -> member -> score, false for a member removed
-- since (nil outside a batch, where each update is made at once).
local deferred

local function index_add(index, score, m)
  if deferred then
    deferred[index] = deferred[index] or {}
    deferred[index][m] = score
  else
    redis.call('ZADD', index, score, m)
  end
end

-- Makes the deferred index updates, a few hundred members per command.
local function flush_deferred()
  for index, members in pairs(deferred) do
    local args = {}
    for m, score in pairs(members) do
      if score then
        args[#args + 1] = score
        args[#args + 1] = m
        if #args >= 1000 then
          redis.call('ZADD', index, unpack(args))
          args = {}
        end
      end
    end
    if #args > 0 then
      redis.call('ZADD', index, unpack(args))
    end
  end
  deferred = nil
end

-- Whether the index score of an entry whose deadline was old_d (nil: none) stays valid for the
-- deadline d: it was at most old_d, so it is at most d when old_d <= d.
local function score_holds(old_d, d)
  return old_d ~= nil and old_d <= d
end

-- Stores an entry over old (the entry under k before, or nil).
local function put(k, index, m, v, d, s, old)
  store(k, v, d, s or 0, now, old and old.n)
  if d then
    if not (old and score_holds(old.d, d)) then
      index_add(index, d, m)
    end
  elseif not old or old.d then
    index_add(index, '+inf', m)
  end
end

-- Takes m out of the index (and out of a batch's deferred updates).
local function index_remove(index, m)
  redis.call('ZREM', index, m)
  if deferred and deferred[index] then
    deferred[index][m] = false
  end
end

local function remove(k, index, m)
  redis.call('DEL', k)
  index_remove(index, m)
end

-- A write over e (the entry under k, loaded by the caller): returns written (0/1), the live
-- value replaced or found, a dead value removed.
local function write(k, index, m, v, cond, ttl, sliding, keep, e)
  local prev, expired = false, false
  if e then
    if live(e) then
      prev = e.v
    else
      expired = e.v
    end
  end
  if (cond == 'nx' and prev) or (cond == 'xx' and not prev) then
    return 0, prev, false
  end
  local d, s
  if keep == '1' and prev then
    d, s = e.d, e.s
    if s > 0 then
      d = now + s -- a write renews a sliding deadline
    end
  elseif ttl > 0 then
    d = now + ttl
    s = (sliding == '1') and ttl or 0
  end
  put(k, index, m, v, d, s, e)
  return 1, prev, expired
end

-- A removal: returns the live value removed, a dead value removed.
local function delete(k, index, m)
  local e = load(k)
  if not e then
    index_remove(index, m)
    return false, false
  end
  remove(k, index, m)
  if live(e) then
    return e.v, false
  end
  return false, e.v
end

-- Of the members of index whose score has passed (due entries not swept yet, and entries whose
-- score is earlier than their deadline), those at positions [offset, offset + count): how many
-- are live, and how many there were.
local function count_live_passed(index, offset, count)
  local base = base_of(index)
  local members = redis.call('ZRANGEBYSCORE', index, '-inf', fmt(now), 'LIMIT', offset, count)
  local n = 0
  for _, m in ipairs(members) do
    if live(load(base .. 'k:' .. m)) then
      n = n + 1
    end
  end
  return n, #members
end

-- A read that counts as an access: renews a sliding deadline and the last-access time.
local function touch(k, index, m, e)
  if e.s > 0 then
    local d, old_d = now + e.s, e.d
    e.d, e.a = d, now
    rewrite_head(k, e, true)
    if not score_holds(old_d, d) then
      redis.call('ZADD', index, d, m)
    end
  elseif now >= e.a + ACCESS_GRANULARITY then
    if e.hash then
      e.a = now
      store_entry(k, e)
    else
      redis.call('SETRANGE', k, A_AT, struct.pack('>d', now))
    end
  end
end

-- One operation: KEYS and ARGV as described above.
local function run(KEYS, ARGV)
  op = ARGV[1]
  server_time = ARGV[2] == ''
  if server_time then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  else
    now = tonumber(ARGV[2])
  end
  grace = tonumber(ARGV[3])
  formatted = {}
  deferred = nil
  if op == 'open' then
    -- KEYS: meta. ARGV: format, buckets. Creates the store's metadata unless it exists; returns
    -- it. A store of format 1 or 2 becomes format 3 as it is: format 1 kept every score equal to
    -- its deadline, which later formats allow, and the hash entries of both are read as they are.
    if redis.call('EXISTS', KEYS[1]) == 0 then
      redis.call('HSET', KEYS[1], 'format', ARGV[4], 'buckets', ARGV[5])
    elseif ARGV[4] == '3' then
      local format = redis.call('HGET', KEYS[1], 'format')
      if format == '1' or format == '2' then
        redis.call('HSET', KEYS[1], 'format', '3')
      end
    end
    return redis.call('HMGET', KEYS[1], 'format', 'buckets')
  elseif op == 'get' then
    -- KEYS: data, index, lock (cluster only). ARGV: member, touch. -1: wait for a batch.
    if batch_locked(KEYS[3]) then
      return -1
    end
    local e = load(KEYS[1])
    if not live(e) then
      return false
    end
    if ARGV[5] == '1' then
      touch(KEYS[1], KEYS[2], ARGV[4], e)
    end
    return e.v
  elseif op == 'get_many' then
    -- KEYS: (data, index) or, in a cluster, (data, index, lock) per key. ARGV: touch, stride
    -- (2 or 3), then the members. -1: wait for a batch.
    local stride = tonumber(ARGV[5])
    local n = #KEYS / stride
    local entries = {}
    for i = 1, n do
      if stride == 3 and batch_locked(KEYS[3 * i]) then
        return -1
      end
      entries[i] = load(KEYS[stride * (i - 1) + 1]) or false
    end
    local out = {}
    for i = 1, n do
      local e = entries[i]
      if e and live(e) then
        if ARGV[4] == '1' then
          touch(KEYS[stride * (i - 1) + 1], KEYS[stride * (i - 1) + 2], ARGV[5 + i], e)
        end
        out[i] = e.v
      else
        out[i] = false
      end
    end
    return out
  elseif op == 'set' then
    -- KEYS: data, index, lock. ARGV: member, value, condition (a|nx|xx), ttl, sliding, keep.
    local r = redis.call('MGET', KEYS[3], KEYS[1])
    if r[1] and r[1] ~= '' then
      return { -1 }
    end
    local w, p, x = write(KEYS[1], KEYS[2], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[8], ARGV[9], loaded(KEYS[1], r[2]))
    return { w, p, x }
  elseif op == 'delete' then
    -- KEYS: data, index, lock. ARGV: member.
    if locked(KEYS[3], '') then
      return { -1 }
    end
    local p, x = delete(KEYS[1], KEYS[2], ARGV[4])
    return { 1, p, x }
  elseif op == 'lock_read' then
    -- KEYS: data, lock. ARGV: token, lease ms. Takes the key's lock and returns its live value
    -- and the time it was judged at, which the update's commit is judged at too: an entry live
    -- when the update read it is live when its change is applied, as in one atomic step.
    local e = load(KEYS[1])
    if not redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', ARGV[5]) then
      return { -1 }
    end
    -- The sweep passes a locked entry by; Redis's own expiry must not remove it meanwhile (no
    -- process would see its `Expire`): its native TTL is made to outlast the lock's lease by the
    -- grace. (Longer than the head's record of it, which only makes Redis's removal later.)
    if e and e.d and not e.hash then
      local pttl = redis.call('PTTL', KEYS[1])
      local want = tonumber(ARGV[5]) + grace
      if pttl >= 0 and pttl < want then
        redis.call('PEXPIRE', KEYS[1], want)
      end
    end
    if live(e) then
      return { 1, e.v, fmt(now) }
    end
    return { 1, false, fmt(now) }
  elseif op == 'commit' then
    -- KEYS: data, index, lock. ARGV: member, token, change (keep|write|delete|replace), value,
    -- ttl, sliding, keep. Applies an update's change and releases the lock it holds.
    if redis.call('GET', KEYS[3]) ~= ARGV[5] then
      return { -2 }
    end
    local change = ARGV[6]
    local p, x = false, false
    if change == 'write' then
      local _
      _, p, x = write(KEYS[1], KEYS[2], ARGV[4], ARGV[7], 'a', tonumber(ARGV[8]), ARGV[9], ARGV[10], load(KEYS[1]))
    elseif change == 'delete' then
      p, x = delete(KEYS[1], KEYS[2], ARGV[4])
    else
      local e = load(KEYS[1])
      if live(e) then
        p = e.v
        if change == 'replace' then
          e.v = ARGV[7]
          store_entry(KEYS[1], e)
        end
      end
    end
    redis.call('DEL', KEYS[3])
    return { 1, p, x }
  elseif op == 'ttl' then
    -- KEYS: data, lock (cluster only). Returns -3 (wait for a batch), -2 (no live entry),
    -- -1 (no deadline) or the remaining ms.
    if batch_locked(KEYS[2]) then
      return -3
    end
    local e = load(KEYS[1])
    if not live(e) then
      return -2
    end
    if not e.d then
      return -1
    end
    return e.d - now
  elseif op == 'expire' then
    -- KEYS: data, index, lock. ARGV: member, ttl (0: never), sliding.
    if locked(KEYS[3], '') then
      return -1
    end
    local e = load(KEYS[1])
    if not live(e) then
      return 0
    end
    local ttl = tonumber(ARGV[5])
    local old_d = e.d
    if ttl > 0 then
      e.d, e.s = now + ttl, (ARGV[6] == '1') and ttl or 0
    else
      e.d, e.s = nil, 0
    end
    rewrite_head(KEYS[1], e)
    if not e.d then
      redis.call('ZADD', KEYS[2], '+inf', ARGV[4])
    elseif not score_holds(old_d, e.d) then
      redis.call('ZADD', KEYS[2], e.d, ARGV[4])
    end
    return 1
  elseif op == 'batch' then
    -- KEYS: the index of each bucket the batch writes; then, against a cluster only, each
    -- operation's entry and lock keys (in the order of the operations below). ARGV: the batch's
    -- lock token ('' if it holds no locks); the number of buckets; the number of shapes, then
    -- each shape: kind (s|d), ttl, sliding, keep; then per bucket (in the order of KEYS) its
    -- number of operations, then per operation its shape's number (from 1), member and value
    -- ('' for a removal). Without the cluster's keys, an operation's entry and lock keys are
    -- its bucket's, built here from the index's name (the same hash tag, so the same slot), so
    -- that a batch sends three arguments per operation, not nine. All or nothing: refused as a
    -- whole while another holds a lock on any key. Releases the batch's locks. Returns 1, then
    -- the live value replaced or removed and the dead value removed of each operation, in the
    -- order sent.
    local token = ARGV[4]
    local buckets = tonumber(ARGV[5])
    local shapes, a = {}, 7
    for i = 1, tonumber(ARGV[6]) do
      shapes[tostring(i)] = { kind = ARGV[a], ttl = tonumber(ARGV[a + 1]), sliding = ARGV[a + 2], keep = ARGV[a + 3] }
      a = a + 4
    end
    local declared = #KEYS > buckets
    -- Per operation (from 1): entry key, lock key, index, member, value, shape.
    local ks, locks, indexes, ms, vs, shape = {}, {}, {}, {}, {}, {}
    local n = 0
    for j = 1, buckets do
      local index = KEYS[j]
      local base = base_of(index)
      local count = tonumber(ARGV[a])
      a = a + 1
      for _ = 1, count do
        n = n + 1
        local m = ARGV[a + 1]
        shape[n], ms[n], vs[n], indexes[n] = shapes[ARGV[a]], m, ARGV[a + 2], index
        if declared then
          ks[n], locks[n] = KEYS[buckets + 2 * n - 1], KEYS[buckets + 2 * n]
        else
          ks[n], locks[n] = base .. 'k:' .. m, base .. 'lock:' .. m
        end
        a = a + 3
      end
    end
    -- The locks and the entries, read a few hundred at a time.
    local texts, unread = {}, {}
    for first = 1, n, 250 do
      local last = math.min(first + 249, n)
      local read = {}
      for i = first, last do
        read[#read + 1] = locks[i]
        read[#read + 1] = ks[i]
      end
      local r = redis.call('MGET', unpack(read))
      for i = first, last do
        local holder = r[2 * (i - first) + 1]
        if holder and holder ~= token then
          return { -1 }
        end
        texts[i] = r[2 * (i - first) + 2]
        if not texts[i] then
          unread[#unread + 1] = i
        end
      end
    end
    -- Keys MGET found no string under: absent, unless some hold an entry of format 2 or a key of
    -- another type (refused by load).
    local hashes = {}
    for first = 1, #unread, 500 do
      local some = {}
      for j = first, math.min(first + 499, #unread) do
        some[#some + 1] = ks[unread[j]]
      end
      if redis.call('EXISTS', unpack(some)) > 0 then
        for j = first, math.min(first + 499, #unread) do
          hashes[unread[j]] = true
        end
      end
    end
    local entries, repeated, seen = {}, {}, {}
    for i = 1, n do
      local k = ks[i]
      if texts[i] then
        entries[i] = decode(k, texts[i])
      elseif hashes[i] then
        entries[i] = load(k) or false
      else
        entries[i] = false
      end
      repeated[i] = seen[k] ~= nil
      seen[k] = true
    end
    local out = { 1 }
    deferred = {}
    for i = 1, n do
      local k, sh = ks[i], shape[i]
      local p, x
      if sh.kind == 's' then
        local _
        local e = entries[i] or nil
        if repeated[i] then
          e = load(k) -- written earlier in this batch
        end
        _, p, x = write(k, indexes[i], ms[i], vs[i], 'a', sh.ttl, sh.sliding, sh.keep, e)
      else
        p, x = delete(k, indexes[i], ms[i])
      end
      out[2 * i] = p
      out[2 * i + 1] = x
    end
    flush_deferred()
    if token ~= '' then
      for i = 1, n do
        if redis.call('GET', locks[i]) == token then
          redis.call('DEL', locks[i])
        end
      end
    end
    return out
  elseif op == 'prepare' then
    -- KEYS: (data, lock) per key of one bucket. ARGV: token ('b:...'), lease ms. The first phase of
    -- a batch spanning several cluster slots: locks every key (all or none) after checking that
    -- each entry decodes. -1: another holds one of the locks.
    for i = 1, #KEYS, 2 do
      if locked(KEYS[i + 1], ARGV[4]) then
        return -1
      end
      load(KEYS[i])
    end
    for i = 2, #KEYS, 2 do
      redis.call('SET', KEYS[i], ARGV[4], 'PX', ARGV[5])
    end
    return 1
  elseif op == 'release' then
    -- KEYS: locks. ARGV: token. Releases those the token holds.
    for _, lock in ipairs(KEYS) do
      if redis.call('GET', lock) == ARGV[4] then
        redis.call('DEL', lock)
      end
    end
    return 1
  elseif op == 'try_lock' then
    -- KEYS: the named lock's hash (fields o owner, e lease end, f fencing token; kept after
    -- release so the token keeps growing). ARGV: owner, lease ms. Returns the new token, or nil
    -- while another owner's lease runs.
    local h = redis.call('HMGET', KEYS[1], 'o', 'e', 'f')
    if h[1] and h[1] ~= '' and (tonumber(h[2]) or 0) > now then
      return false
    end
    local f = (tonumber(h[3]) or 0) + 1
    redis.call('HSET', KEYS[1], 'o', ARGV[4], 'e', now + tonumber(ARGV[5]), 'f', f)
    return f
  elseif op == 'unlock' then
    -- KEYS: the named lock's hash. ARGV: owner. 1 if that owner held it (lease running) and it is
    -- released now, else 0.
    local h = redis.call('HMGET', KEYS[1], 'o', 'e')
    if h[1] == ARGV[4] and (tonumber(h[2]) or 0) > now then
      redis.call('HSET', KEYS[1], 'o', '', 'e', '0')
      return 1
    end
    return 0
  elseif op == 'len' then
    -- KEYS: indexes. ARGV: limit. The live entries, or -1 when more than limit members have
    -- passed scores in all (the sweep is behind: a store whose scores passed at once), for the
    -- caller to count in chunks (len_chunk) rather than load them all in one call.
    -- A score after now proves an entry live; those that have passed are judged by the entry.
    local passed, total = {}, 0
    for i, index in ipairs(KEYS) do
      passed[i] = redis.call('ZCOUNT', index, '-inf', fmt(now))
      total = total + passed[i]
    end
    if total > tonumber(ARGV[4]) then
      return -1
    end
    local n = 0
    for i, index in ipairs(KEYS) do
      n = n + redis.call('ZCARD', index) - passed[i]
      if passed[i] > 0 then
        n = n + count_live_passed(index, 0, passed[i])
      end
    end
    return n
  elseif op == 'len_chunk' then
    -- KEYS: index. ARGV: offset, limit. { live entries among the members [offset, offset + limit)
    -- of those with passed scores (plus, from offset 0, those with later scores), members looked
    -- at }.
    local live, seen = count_live_passed(KEYS[1], tonumber(ARGV[4]), ARGV[5])
    if ARGV[4] == '0' then
      live = live + redis.call('ZCOUNT', KEYS[1], '(' .. fmt(now), '+inf')
    end
    return { live, seen }
  elseif op == 'next_deadline' then
    -- KEYS: indexes. The earliest deadline, or nil.
    local best = nil
    for _, index in ipairs(KEYS) do
      local first = redis.call('ZRANGE', index, 0, 0, 'WITHSCORES')
      if first[2] then
        local d = tonumber(first[2])
        if d ~= math.huge and (best == nil or d < best) then
          best = d
        end
      end
    end
    if best then
      return fmt(best)
    end
    return false
  elseif op == 'sweep' then
    -- KEYS: indexes. ARGV: limit. Removes due entries and returns { more, then member, value,
    -- deadline triples }; moves the scores it finds early to their deadlines. Looks at `limit` members at most, due
    -- or not, so that one call stays short when many scores pass at once (a store whose keys are
    -- all rewritten with later deadlines). Entries under a lock wait for the next sweep.
    -- The budget is shared: each index first gets its part, so that early scores piling up in
    -- one bucket do not hold back the due entries of the others; what is left then goes to the
    -- indexes that had more, in order.
    -- An entry that does not decode is left as it is and does not stop the sweep (one such entry
    -- would otherwise stop expiry for the whole store): its member's score moves a minute on,
    -- so that sweeps look at it again only then (and drop the member once its key is gone),
    -- and its member is listed after the count of such entries in the reply, for the caller to
    -- report. Every other read of it is still an error.
    local left = tonumber(ARGV[4])
    local plan, undecodable = {}, {}
    local function take(index, offset, count)
      local base = base_of(index)
      local due = redis.call('ZRANGEBYSCORE', index, '-inf', fmt(now), 'LIMIT', offset, count)
      left = left - #due
      for _, m in ipairs(due) do
        if redis.call('EXISTS', base .. 'lock:' .. m) == 0 then
          local k = base .. 'k:' .. m
          local ok, e = pcall(load, k)
          if ok then
            plan[#plan + 1] = { index, k, m, e or false }
          elseif string.find(type(e) == 'table' and tostring(e.err) or tostring(e),
              'LIVEDICT undecodable entry', 1, true) then
            -- (The error reaches pcall as a table or, from a function library, as its text.)
            undecodable[#undecodable + 1] = { index, m }
          else
            error(e)
          end
        end
      end
      return #due
    end
    local full = {}
    for i, index in ipairs(KEYS) do
      local share = math.ceil(left / (#KEYS - i + 1))
      if share > 0 and take(index, 0, share) == share then
        full[#full + 1] = { index, share }
      end
    end
    for _, f in ipairs(full) do
      if left <= 0 then
        break
      end
      take(f[1], f[2], left)
    end
    -- First: 1 when the budget ran out with work done (the caller calls again), else 0; then
    -- the number of undecodable entries passed by, and their members.
    local out = { (left <= 0 and (#plan > 0 or #undecodable > 0)) and 1 or 0, #undecodable }
    for _, u in ipairs(undecodable) do
      redis.call('ZADD', u[1], now + UNDECODABLE_REVISIT, u[2])
      out[#out + 1] = u[2]
    end
    for _, p in ipairs(plan) do
      local index, k, m, e = p[1], p[2], p[3], p[4]
      if not e then
        redis.call('ZREM', index, m) -- Redis expired it natively while no process swept
      elseif e.d and e.d <= now then
        remove(k, index, m)
        out[#out + 1] = m
        out[#out + 1] = e.v
        out[#out + 1] = fmt(e.d)
      else
        redis.call('ZADD', index, e.d and fmt(e.d) or '+inf', m)
      end
    end
    return out
  elseif op == 'pop' then
    -- KEYS: indexes. ARGV: offset, window. Removes some live, unlocked entry and returns
    -- { member, value }.
    for _, index in ipairs(KEYS) do
      local base = base_of(index)
      local candidates = redis.call('ZRANGEBYSCORE', index, '(' .. fmt(now), '+inf', 'LIMIT', 0, 16)
      for _, m in ipairs(candidates) do
        if redis.call('EXISTS', base .. 'lock:' .. m) == 0 then
          local k = base .. 'k:' .. m
          local e = load(k)
          if live(e) then
            remove(k, index, m)
            return { m, e.v }
          end
        end
      end
    end
    -- Then the members whose scores have passed (some may be live: the index is lazy), a window
    -- of them per call: { 1 } asks the caller to call again with the next window.
    local more = 0
    local window = tonumber(ARGV[5])
    for _, index in ipairs(KEYS) do
      local base = base_of(index)
      local passed = redis.call('ZRANGEBYSCORE', index, '-inf', fmt(now), 'LIMIT', ARGV[4], window)
      for _, m in ipairs(passed) do
        local k = base .. 'k:' .. m
        local e = load(k)
        if live(e) and redis.call('EXISTS', base .. 'lock:' .. m) == 0 then
          remove(k, index, m)
          return { m, e.v }
        end
      end
      if #passed == window then
        more = 1
      end
    end
    return { more }
  elseif op == 'clear' then
    -- KEYS: indexes. ARGV: limit. Removes up to limit entries; returns { live removed, more, then
    -- member, value, deadline of each dead entry removed }. An entry whose key an update or a
    -- batch holds is left for a later call (a clear never lands between an update's read and
    -- its commit), and `more` is then 1; { -1, member } (nothing removed) when all it found
    -- are held: the caller waits, then calls again.
    local left = tonumber(ARGV[4])
    local plan, held = {}, nil
    local more = 0
    for _, index in ipairs(KEYS) do
      local base = base_of(index)
      local members = redis.call('ZRANGE', index, 0, left - 1)
      for _, m in ipairs(members) do
        if redis.call('EXISTS', base .. 'lock:' .. m) == 1 then
          held = held or m
        else
          local k = base .. 'k:' .. m
          plan[#plan + 1] = { index, k, m, load(k) or false }
        end
      end
      left = left - #members
      if left <= 0 then
        more = 1
        break
      end
    end
    if held then
      if #plan == 0 then
        return { -1, held }
      end
      more = 1
    end
    local removed, out = 0, { 0, more }
    for _, p in ipairs(plan) do
      local index, k, m, e = p[1], p[2], p[3], p[4]
      remove(k, index, m)
      if e then
        if live(e) then
          removed = removed + 1
        else
          out[#out + 1] = m
          out[#out + 1] = e.v
          out[#out + 1] = fmt(e.d)
        end
      end
    end
    out[1] = removed
    return out
  elseif op == 'scan' then
    -- KEYS: index. ARGV: cursor, match pattern, with values, count. Returns { next cursor, then
    -- members (and values) of live entries }.
    local r = redis.call('ZSCAN', KEYS[1], ARGV[4], 'MATCH', ARGV[5], 'COUNT', ARGV[7])
    local base = base_of(KEYS[1])
    local out = { r[1] }
    local items = r[2]
    for i = 1, #items, 2 do
      local m = items[i]
      local e = true -- a score after now proves the entry live
      if ARGV[6] == '1' or tonumber(items[i + 1]) <= now then
        e = load(base .. 'k:' .. m)
      end
      if e == true or live(e) then
        out[#out + 1] = m
        if ARGV[6] == '1' then
          out[#out + 1] = e.v
        end
      end
    end
    return out
  elseif op == 'remove_inactive' then
    -- KEYS: index. ARGV: cursor, idle ms, count, match pattern. Removes live, unlocked entries
    -- matching the pattern not accessed for idle ms; returns { next cursor, then member, value
    -- pairs }.
    local r = redis.call('ZSCAN', KEYS[1], ARGV[4], 'MATCH', ARGV[7], 'COUNT', ARGV[6])
    local base = base_of(KEYS[1])
    local cutoff = now - tonumber(ARGV[5])
    local items = r[2]
    local plan = {}
    for i = 1, #items, 2 do
      local m = items[i]
      if redis.call('EXISTS', base .. 'lock:' .. m) == 0 then
        local k = base .. 'k:' .. m
        local e = load(k)
        if live(e) and e.a + ACCESS_GRANULARITY <= cutoff then
          plan[#plan + 1] = { k, m, e.v }
        end
      end
    end
    local out = { r[1] }
    for _, p in ipairs(plan) do
      remove(p[1], KEYS[1], p[2])
      out[#out + 1] = p[2]
      out[#out + 1] = p[3]
    end
    return out
  end
  error({ err = 'LIVEDICT unknown operation ' .. tostring(op) })
end
