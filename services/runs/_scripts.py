"""The Lua scripts behind `RunStore`: each write that must happen once, atomically.

Statuses are `RunStatus` numbers: 1 PENDING, 2 RUNNING, 3 COMPLETED, 4 FAILED,
5 CANCELLED (3-5 are the ends), 6 CANCELLING, 7 AWAITING_APPROVAL.

Every event is appended through `append`: the run's counter `seq` gives it the next
sequence number, and the stream entry's id is `<sequence>-0`, so event ids are the
sequence numbers themselves: gap-free, in order, and a resume point that any gateway
(after a restart, too) can serve from the stream alone."""

from __future__ import annotations

__all__ = [
    "ADD_ONCE",
    "APPEND_ONCE",
    "BEGIN_CALL",
    "CANCEL",
    "CREATE",
    "DECIDE",
    "END_CALL",
    "EXPIRE_APPROVAL",
    "FINISH",
    "PAUSE",
    "RECORD",
    "RUNNING",
]

_PRELUDE = """
local function ended(s) return s == 3 or s == 4 or s == 5 end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function append(run, events, field, value)
  local seq = redis.call('HINCRBY', run, 'seq', 1)
  local id = seq .. '-0'
  redis.call('XADD', events, id, field, value, 't', now_ms())
  return id
end
"""

# KEYS: request, run, runs, events, in-flight[, the tenant's token budget this period].
# A tenant whose budget is spent (ARGV[11]: the tokens at which it is: the limit less
# what the smallest model call needs) is refused first, with its tokens used and
# reserved. A reused request id answers with the run it started and the digest of the
# request that started it; a tenant at its cap of runs in flight is refused before
# anything is written.
CREATE = (
    _PRELUDE
    + """
if #KEYS >= 6 then
  local used = tonumber(redis.call('HGET', KEYS[6], 'used') or '0')
  local reserved = tonumber(redis.call('HGET', KEYS[6], 'reserved') or '0')
  if used + reserved >= tonumber(ARGV[11]) then
    return {'spent', used .. '|' .. reserved}
  end
end
if ARGV[7] == '1' then
  local first = redis.call('GET', KEYS[1])
  if first then return {'existing', first} end
end
local cap = tonumber(ARGV[9])
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[10]))
  local busy = redis.call('ZCARD', KEYS[5])
  if busy >= cap then return {'full', tostring(busy)} end
  redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
  redis.call('PEXPIRE', KEYS[5], ARGV[10])
end
if ARGV[7] == '1' then
  redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[8], 'EX', ARGV[5])
end
redis.call('HSET', KEYS[2], 'run', ARGV[2], 'status', 1, 'steps', 0, 'update_ms', ARGV[3],
  'seq', 0)
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[6]) * 1000)
redis.call('EXPIRE', KEYS[3], ARGV[6])
append(KEYS[2], KEYS[4], 'e', ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[6])
return {'new', ''}
"""
)

# Nothing is appended to a run that ended: `finished` stays the last event. KEYS[3],
# when given, is set to ARGV[4] for ARGV[5] seconds first, whatever the append does (a
# record the caller keeps beside the event, written in the same round trip). ARGV[3],
# when not empty, is a tool call that is over (END_CALL, in the same step).
APPEND_ONCE = (
    _PRELUDE
    + """
if #KEYS >= 3 then redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5]) end
if ARGV[3] ~= '' then redis.call('HDEL', KEYS[1], 'active:' .. ARGV[3]) end
local status = tonumber(redis.call('HGET', KEYS[1], 'status'))
if not status or ended(status) then return false end
if redis.call('HSETNX', KEYS[1], 'once:' .. ARGV[1], 1) == 0 then return false end
return append(KEYS[1], KEYS[2], 'e', ARGV[2])
"""
)

# A run being cancelled stays CANCELLING whatever step starts.
RUNNING = (
    _PRELUDE
    + """
local status = tonumber(redis.call('HGET', KEYS[1], 'status'))
if not status or ended(status) then return 0 end
local steps = tonumber(redis.call('HGET', KEYS[1], 'steps') or '0')
if tonumber(ARGV[1]) + 1 > steps then steps = tonumber(ARGV[1]) + 1 end
if status ~= 6 then status = 2 end
redis.call('HSET', KEYS[1], 'status', status, 'steps', steps, 'update_ms', ARGV[2])
return 1
"""
)

# From here on no tool call may begin (BEGIN_CALL checks the same field atomically).
CANCEL = (
    _PRELUDE
    + """
local status = tonumber(redis.call('HGET', KEYS[1], 'status'))
if not status then return -1 end
if ended(status) then return 0 end
redis.call('HSETNX', KEYS[1], 'cancel', ARGV[1])
redis.call('HSET', KEYS[1], 'status', 6, 'update_ms', ARGV[2])
return 1
"""
)

# KEYS: run, events, in-flight[, session]. The run's end, at most once. A cancellation
# requested before it wins over the outcome the caller brings: the caller asked for the
# work to stop. The run leaves the tenant's runs in flight. Returns -1 for an unknown run, else
# {code, the run's fields as they are now}: the caller needs no second read. ARGV[9..]:
# (marker, event) pairs appended first, as APPEND_ONCE appends them (the answer's last
# pieces): in the same step as `finished`, so a reader blocked on the stream wakes once
# for them all.
FINISH = (
    _PRELUDE
    + """
local status = tonumber(redis.call('HGET', KEYS[1], 'status'))
if not status then return -1 end
if not ended(status) then
  for i = 9, #ARGV - 1, 2 do
    if redis.call('HSETNX', KEYS[1], 'once:' .. ARGV[i], 1) == 1 then
      append(KEYS[1], KEYS[2], 'e', ARGV[i + 1])
    end
  end
end
-- The run's turn in its conversation's session (KEYS[4], when given), counted once
-- whoever ends the run (an unknown run returned above: no marker, no hash left behind).
local function turn(final)
  if #KEYS < 4 or redis.call('HSETNX', KEYS[1], 'once:turn', 1) == 0 then return end
  redis.call('HINCRBY', KEYS[4], 'turns', 1)
  redis.call('HSET', KEYS[4], 'last_run', ARGV[7], 'last_status', final)
  redis.call('EXPIRE', KEYS[4], ARGV[8])
end
if ended(status) then
  turn(status)
  return {0, redis.call('HGETALL', KEYS[1])}
end
local final, err = ARGV[1], ARGV[3]
local cancel = redis.call('HGET', KEYS[1], 'cancel')
if cancel then final, err = '5', cancel end
redis.call('HSET', KEYS[1], 'status', final, 'error', err, 'update_ms', ARGV[5])
if final == '3' then redis.call('HSET', KEYS[1], 'answer', ARGV[2]) end
local steps = tonumber(redis.call('HGET', KEYS[1], 'steps') or '0')
if tonumber(ARGV[4]) > steps then redis.call('HSET', KEYS[1], 'steps', ARGV[4]) end
redis.call('ZREM', KEYS[3], ARGV[7])
append(KEYS[1], KEYS[2], 'k', 'finished')
redis.call('EXPIRE', KEYS[2], ARGV[6])
turn(final)
return {tonumber(final), redis.call('HGETALL', KEYS[1])}
"""
)

# A step's results; the caller whose result completes the step (and the same caller
# again, on a redelivery) gets them all, everyone else gets nothing. A result of an
# unknown (expired) run is dropped: its marker would otherwise create a run hash with
# no TTL, which `get` would return as a run.
RECORD = """
if redis.call('EXISTS', KEYS[2]) == 0 then return false end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
if redis.call('HLEN', KEYS[1]) < tonumber(ARGV[3]) then return false end
local marker = 'once:step-complete:' .. ARGV[5]
if redis.call('HSETNX', KEYS[2], marker, ARGV[1]) == 0
   and redis.call('HGET', KEYS[2], marker) ~= ARGV[1] then
  return false
end
return redis.call('HVALS', KEYS[1])
"""

# Counters of a run that a redelivered message must not add to twice: each addition
# carries a marker and counts once.
ADD_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HSETNX', KEYS[1], 'once:' .. ARGV[1], 1) == 1 then
  for i = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
local out = {}
for i = 2, #ARGV, 2 do out[#out + 1] = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0') end
return out
"""

# A tool call begins only if its run is neither cancelled nor ended, checked and
# recorded in one step: once CANCEL returned, no call can begin. KEYS[3], when given,
# is the call's result record: a call whose result was recorded (a redelivery) does not
# begin again, and its record is returned instead of 0 or 1.
BEGIN_CALL = (
    _PRELUDE
    + """
if #KEYS >= 3 then
  local recorded = redis.call('GET', KEYS[3])
  if recorded then return recorded end
end
local status = tonumber(redis.call('HGET', KEYS[1], 'status'))
if not status or ended(status) or redis.call('HEXISTS', KEYS[1], 'cancel') == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'active:' .. ARGV[1], ARGV[2])
-- KEYS[2], when given: the events, to which the call's `started` event (ARGV[4]) is
-- appended once per marker (ARGV[3]) in the same step, as APPEND_ONCE would.
if #KEYS >= 2 and redis.call('HSETNX', KEYS[1], 'once:' .. ARGV[3], 1) == 1 then
  append(KEYS[1], KEYS[2], 'e', ARGV[4])
end
return 1
"""
)

END_CALL = """
return redis.call('HDEL', KEYS[1], 'active:' .. ARGV[1])
"""

# A call that needs approval: kept pending (with its task, to publish once approved)
# and announced once; the run waits unless it is being cancelled.
PAUSE = (
    _PRELUDE
    + """
local status = tonumber(redis.call('HGET', KEYS[1], 'status'))
if not status or ended(status) then return 0 end
if redis.call('HSETNX', KEYS[1], 'approval:' .. ARGV[1], 'pending') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'pending:' .. ARGV[1], ARGV[2], 'task:' .. ARGV[1], ARGV[3])
redis.call('HINCRBY', KEYS[1], 'pending', 1)
if status ~= 6 then redis.call('HSET', KEYS[1], 'status', 7, 'update_ms', ARGV[5]) end
append(KEYS[1], KEYS[2], 'e', ARGV[4])
return 1
"""
)

# A person's decision on a pending call: {1, task} when it took effect (the caller then
# publishes the task), {0, state} when the call was decided already (or expired), {-1}
# for a call that never waited. The run goes on once nothing waits.
DECIDE = (
    _PRELUDE
    + """
local state = redis.call('HGET', KEYS[1], 'approval:' .. ARGV[1])
if not state then return {-1, ''} end
if state ~= 'pending' then return {0, state} end
redis.call('HSET', KEYS[1], 'approval:' .. ARGV[1], ARGV[2], 'update_ms', ARGV[4])
redis.call('HDEL', KEYS[1], 'pending:' .. ARGV[1])
local left = redis.call('HINCRBY', KEYS[1], 'pending', -1)
local status = tonumber(redis.call('HGET', KEYS[1], 'status'))
if left <= 0 and status == 7 then redis.call('HSET', KEYS[1], 'status', 2) end
append(KEYS[1], KEYS[2], 'e', ARGV[3])
return {1, redis.call('HGET', KEYS[1], 'task:' .. ARGV[1])}
"""
)

# The approval timer fired: a call still pending expires (the run then fails); returns
# the call's state after this (`expired`, or the decision made in time).
EXPIRE_APPROVAL = """
local state = redis.call('HGET', KEYS[1], 'approval:' .. ARGV[1])
if state == 'pending' then
  redis.call('HSET', KEYS[1], 'approval:' .. ARGV[1], 'expired')
  redis.call('HDEL', KEYS[1], 'pending:' .. ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'pending', -1)
  return 'expired'
end
return state or ''
"""
