-- One atomic append for a batch of decided commands (DESIGN §5).
--
-- KEYS[1] = the log stream, KEYS[2] = the global seq counter, then for every command in order: its outcome key,
--   then the keys of the accounts it touched.
-- ARGV[1] = outcome TTL (s), ARGV[2] = number of commands, then per command:
--   n_accounts, n_events, outcome_mode, outcome_a, outcome_b,
--   per account: expected_version, n_fields, field1, value1, ...   (n_fields is 0 when nothing changes)
--   per event:   type, body_prefix, body_suffix                  (the body is prefix .. seq .. suffix)
-- outcome_mode: 'seq' (outcome = outcome_a .. last seq .. outcome_b) or 'plain' (outcome = outcome_a).
-- Returns a flat array {status1, x1, status2, x2, ...} with status 'ok' | 'rejected' | 'dup' | 'conflict'; x is
-- the last seq the command appended (0 when it appended nothing), or for 'dup' the outcome stored by the first
-- delivery, which is the answer to a resend.
--
-- The script only writes the log and the write-side state. The reply and the acknowledgement of the request
-- are the handler's, on the request bus, once the script has returned (see commands/handler.py): the bus is a
-- separate, non-persistent Redis in the recommended layout, so requests and replies cost the log no disk sync.
--
-- The whole batch is validated before the first write, because a Lua error keeps earlier writes. Counts must be
-- non-negative integers. Every variable is local: a global breaks later scripts on fakeredis.
--
-- Redis runs scripts on its only thread, so this one is written for speed: the validation pass only checks
-- counts and presence (ARGV has no holes, so the last argument of a run proves the run), remembers where each
-- command starts, and the write pass reads ARGV and KEYS by index; no table per command, no unpack for the
-- usual one or two fields, and no HGET for an account whose version this batch already knows.

local call = redis.call
local tonumber = tonumber
local unpack = unpack
local tostring = tostring
local keys = KEYS
local argv = ARGV

local function bad(message)
  return redis.error_reply('APPEND_BAD_ARGS ' .. message)
end

local outcome_modes = {seq = true, plain = true}

local function is_count(n)
  return n ~= nil and n >= 0 and n % 1 == 0
end

local outcome_ttl = tonumber(argv[1])
local n_commands = tonumber(argv[2])
if not outcome_ttl or not is_count(n_commands) or not keys[2] then
  return bad('header')
end

-- Validation pass: where each command's arguments (a), keys (k) and events (e) start.
local starts_a, starts_k, starts_e = {}, {}, {}
local a = 3
local k = 3
for c = 1, n_commands do
  local n_acct = tonumber(argv[a])
  local n_events = tonumber(argv[a + 1])
  if not is_count(n_acct) or not is_count(n_events) or not outcome_modes[argv[a + 2]] then
    return bad('command ' .. c)
  end
  if not keys[k] or not argv[a + 4] then
    return bad('command ' .. c .. ' keys')
  end
  starts_a[c] = a
  starts_k[c] = k
  a = a + 5
  for i = 1, n_acct do
    local n_fields = tonumber(argv[a + 1])
    if not keys[k + i] or not is_count(n_fields) then
      return bad('command ' .. c .. ' account ' .. i)
    end
    a = a + 2 + n_fields * 2
    if not argv[a - 1] then
      return bad('command ' .. c .. ' account ' .. i .. ' fields')
    end
  end
  starts_e[c] = a
  a = a + n_events * 3
  if n_events > 0 and not argv[a - 1] then
    for e = 1, n_events do
      if not argv[a - n_events * 3 + e * 3 - 1] then
        return bad('command ' .. c .. ' event ' .. e)
      end
    end
  end
  k = k + 1 + n_acct
end
if argv[a] ~= nil or keys[k] ~= nil then
  return bad('trailing arguments')
end

local log_key = keys[1]
local seq_key = keys[2]

-- A later command of the batch may have been decided on top of an earlier one's effects. Once a command is
-- not applied (conflict or duplicate), its accounts are poisoned for the rest of the batch: a later command on
-- them is a conflict too, even if its expected version happens to match a write made by another handler.
-- known[key] is false for a poisoned account, else the version this batch left it at (nil: not touched yet).
local known = {}
local result = {}
local r = 0
-- The global seq is read once and written once per call (not INCR per event): one command less per event, in
-- Redis and in the AOF. The script is atomic, so no other writer can interleave.
local seq = tonumber(call('GET', seq_key) or '0')
local first_seq = seq
for c = 1, n_commands do
  a = starts_a[c]
  k = starts_k[c]
  local n_acct = tonumber(argv[a])
  local outcome_key = keys[k]
  local status = 'conflict'
  local detail = 0
  local stored = call('GET', outcome_key)
  if stored then
    for i = k + 1, k + n_acct do
      known[keys[i]] = false
    end
    status = 'dup'
    detail = stored
  else
    local p = a + 5
    for i = k + 1, k + n_acct do
      local key = keys[i]
      local current = known[key]
      if current == nil then
        current = call('HGET', key, 'version') or '0'
      end
      if current ~= argv[p] then  -- false (poisoned) never equals a string
        status = nil
        break
      end
      p = p + 2 + 2 * tonumber(argv[p + 1])
    end
    if status == nil then
      for i = k + 1, k + n_acct do
        known[keys[i]] = false
      end
      status = 'conflict'
    else
      local n_events = tonumber(argv[a + 1])
      p = starts_e[c]
      for _ = 1, n_events do
        seq = seq + 1
        detail = seq
        -- Lua numbers are doubles: each conversion to text is a sprintf("%.14g"), so it is made once per event.
        local text = tostring(seq)
        call('XADD', log_key, text .. '-0', 'seq', text, 'type', argv[p], 'body', argv[p + 1] .. text .. argv[p + 2])
        p = p + 3
      end
      p = a + 5
      for i = k + 1, k + n_acct do
        local key = keys[i]
        local n_fields = tonumber(argv[p + 1])
        if n_fields == 2 then
          call('HSET', key, argv[p + 2], argv[p + 3], argv[p + 4], argv[p + 5])
        elseif n_fields == 1 then
          call('HSET', key, argv[p + 2], argv[p + 3])
        elseif n_fields > 0 then
          call('HSET', key, unpack(argv, p + 2, p + 1 + 2 * n_fields))
        end
        local version = nil
        for f = p + 2, p + 2 * n_fields, 2 do
          if argv[f] == 'version' then
            version = argv[f + 1]
          end
        end
        if version then
          known[key] = version
        elseif known[key] == nil then
          known[key] = argv[p]  -- unchanged, and it matched
        end
        p = p + 2 + 2 * n_fields
      end
      local outcome = argv[a + 3]
      if argv[a + 2] == 'seq' then
        outcome = outcome .. detail .. argv[a + 4]
      end
      call('SET', outcome_key, outcome, 'EX', outcome_ttl)
      if n_events > 0 then
        status = 'ok'
      else
        status = 'rejected'
      end
    end
  end
  result[r + 1] = status
  result[r + 2] = detail
  r = r + 2
end
if seq ~= first_seq then
  call('SET', seq_key, seq)
end
return result
