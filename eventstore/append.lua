-- One atomic append for a batch of decided commands (DESIGN §5).
--
-- KEYS[1] = the log stream, KEYS[2] = the global seq counter, KEYS[3] = the request stream, then for every
--   command in order: its outcome key, its reply key, then the keys of the accounts it touched.
-- ARGV[1] = outcome TTL (s), ARGV[2] = reply TTL (s), ARGV[3] = number of commands, ARGV[4] = the request
--   stream's consumer group ('' when nothing is acknowledged here), then per command:
--   n_accounts, n_events, reply_mode ('seq' | 'plain'), reply_a, reply_b, ack_id ('' or the request's entry id),
--   per account: expected_version, n_fields, field1, value1, ...   (n_fields is 0 when nothing changes)
--   per event:   type, body_prefix, body_suffix                  (the body is prefix .. seq .. suffix)
-- Returns a flat array {status1, seq1, status2, seq2, ...} with status 'ok' | 'rejected' | 'dup' | 'conflict'
-- and seq the last seq the command appended (0 when it appended nothing). A settled command (anything but a
-- conflict) with an ack_id has its request acknowledged and deleted in the same atomic step, which saves the
-- handler a round trip and a disk sync per batch.
--
-- The whole batch is parsed and validated before the first write, because a Lua error keeps earlier writes.
-- Every variable is local: a global breaks later scripts on fakeredis.

local function bad(message)
  return redis.error_reply('APPEND_BAD_ARGS ' .. message)
end

local outcome_ttl = tonumber(ARGV[1])
local reply_ttl = tonumber(ARGV[2])
local n_commands = tonumber(ARGV[3])
local ack_group = ARGV[4]
if not outcome_ttl or not reply_ttl or not n_commands or not ack_group or not KEYS[3] then
  return bad('header')
end

local commands = {}
local a = 5
local k = 4
for c = 1, n_commands do
  local n_acct = tonumber(ARGV[a])
  local n_events = tonumber(ARGV[a + 1])
  local reply_mode = ARGV[a + 2]
  if not n_acct or not n_events or (reply_mode ~= 'seq' and reply_mode ~= 'plain') then
    return bad('command ' .. c)
  end
  local command = {
    outcome_key = KEYS[k], reply_key = KEYS[k + 1], reply_mode = reply_mode,
    reply_a = ARGV[a + 3], reply_b = ARGV[a + 4], ack_id = ARGV[a + 5], accounts = {}, events = {},
  }
  if not command.outcome_key or not command.reply_key or not command.reply_a or not command.reply_b
      or not command.ack_id or (command.ack_id ~= '' and ack_group == '') then
    return bad('command ' .. c .. ' keys')
  end
  a = a + 6
  for i = 1, n_acct do
    local n_fields = tonumber(ARGV[a + 1])
    local key = KEYS[k + 1 + i]
    if not key or not n_fields or not ARGV[a] then
      return bad('command ' .. c .. ' account ' .. i)
    end
    local fields = {}
    for f = 1, n_fields * 2 do
      fields[f] = ARGV[a + 1 + f]
      if not fields[f] then
        return bad('command ' .. c .. ' account ' .. i .. ' fields')
      end
    end
    command.accounts[i] = { key = key, expected = ARGV[a], fields = fields }
    a = a + 2 + n_fields * 2
  end
  for e = 1, n_events do
    if not ARGV[a] or not ARGV[a + 1] or not ARGV[a + 2] then
      return bad('command ' .. c .. ' event ' .. e)
    end
    command.events[e] = { type = ARGV[a], prefix = ARGV[a + 1], suffix = ARGV[a + 2] }
    a = a + 3
  end
  k = k + 2 + n_acct
  commands[c] = command
end
if ARGV[a] ~= nil or KEYS[k] ~= nil then
  return bad('trailing arguments')
end

-- A later command of the batch may have been decided on top of an earlier one's effects. Once a command is
-- not applied (conflict or duplicate), its accounts are poisoned for the rest of the batch: a later command on
-- them is a conflict too, even if its expected version happens to match a write made by another handler.
local poisoned = {}
local function poison(command)
  for i = 1, #command.accounts do
    poisoned[command.accounts[i].key] = true
  end
end

local function acknowledge(command)
  if command.ack_id ~= '' then
    redis.call('XACK', KEYS[3], ack_group, command.ack_id)
    redis.call('XDEL', KEYS[3], command.ack_id)
  end
end

local result = {}
for c = 1, n_commands do
  local command = commands[c]
  local stored = redis.call('GET', command.outcome_key)
  if stored then
    poison(command)
    redis.call('RPUSH', command.reply_key, stored)
    redis.call('EXPIRE', command.reply_key, reply_ttl)
    acknowledge(command)
    result[#result + 1] = 'dup'
    result[#result + 1] = 0
  else
    local conflict = false
    for i = 1, #command.accounts do
      local current = redis.call('HGET', command.accounts[i].key, 'version') or '0'
      if poisoned[command.accounts[i].key] or current ~= command.accounts[i].expected then
        conflict = true
        break
      end
    end
    if conflict then
      poison(command)
      result[#result + 1] = 'conflict'
      result[#result + 1] = 0
    else
      local last_seq = 0
      for e = 1, #command.events do
        local event = command.events[e]
        last_seq = redis.call('INCR', KEYS[2])
        redis.call('XADD', KEYS[1], last_seq .. '-0',
          'seq', last_seq, 'type', event.type, 'body', event.prefix .. last_seq .. event.suffix)
      end
      for i = 1, #command.accounts do
        if #command.accounts[i].fields > 0 then
          redis.call('HSET', command.accounts[i].key, unpack(command.accounts[i].fields))
        end
      end
      local reply = command.reply_a
      if command.reply_mode == 'seq' then
        reply = command.reply_a .. last_seq .. command.reply_b
      end
      redis.call('SET', command.outcome_key, reply, 'EX', outcome_ttl)
      redis.call('RPUSH', command.reply_key, reply)
      redis.call('EXPIRE', command.reply_key, reply_ttl)
      acknowledge(command)
      if #command.events > 0 then
        result[#result + 1] = 'ok'
      else
        result[#result + 1] = 'rejected'
      end
      result[#result + 1] = last_seq
    end
  end
end
return result
