"""The Lua scripts behind `RunStore`: each write that must happen once, atomically.

Statuses are `RunStatus` numbers: 1 PENDING, 2 RUNNING, and 3 and up terminal
(COMPLETED, FAILED, CANCELLED)."""

from __future__ import annotations

__all__ = [
    "ADD_ONCE",
    "APPEND_ONCE",
    "CANCEL",
    "CREATE",
    "FINISH",
    "RECORD",
    "RUNNING",
    "TURN",
]

CREATE = """
if ARGV[7] == '1' then
  local first = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[5], 'GET')
  if first then return first end
end
redis.call('HSET', KEYS[2], 'run', ARGV[2], 'status', 1, 'steps', 0, 'update_ms', ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[6]) * 1000)
redis.call('EXPIRE', KEYS[3], ARGV[6])
redis.call('XADD', KEYS[4], '*', 'e', ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[6])
return false
"""

# Nothing is appended to a run that ended: `finished` stays the last event.
APPEND_ONCE = """
local status = tonumber(redis.call('HGET', KEYS[1], 'status'))
if not status or status >= 3 then return false end
if redis.call('HSETNX', KEYS[1], 'once:' .. ARGV[1], 1) == 0 then return false end
return redis.call('XADD', KEYS[2], '*', 'e', ARGV[2])
"""

RUNNING = """
local status = tonumber(redis.call('HGET', KEYS[1], 'status'))
if not status or status >= 3 then return 0 end
local steps = tonumber(redis.call('HGET', KEYS[1], 'steps') or '0')
if tonumber(ARGV[1]) + 1 > steps then steps = tonumber(ARGV[1]) + 1 end
redis.call('HSET', KEYS[1], 'status', 2, 'steps', steps, 'update_ms', ARGV[2])
return 1
"""

CANCEL = """
local status = tonumber(redis.call('HGET', KEYS[1], 'status'))
if not status then return -1 end
if status >= 3 then return 0 end
redis.call('HSETNX', KEYS[1], 'cancel', ARGV[1])
redis.call('HSET', KEYS[1], 'update_ms', ARGV[2])
return 1
"""

# The run's end, at most once. A cancellation requested before it wins over the
# outcome the caller brings: the caller asked for the work to stop.
FINISH = """
local status = tonumber(redis.call('HGET', KEYS[1], 'status'))
if not status then return -1 end
if status >= 3 then return 0 end
local final, err = ARGV[1], ARGV[3]
local cancel = redis.call('HGET', KEYS[1], 'cancel')
if cancel then final, err = '5', cancel end
redis.call('HSET', KEYS[1], 'status', final, 'error', err, 'update_ms', ARGV[5])
if final == '3' then redis.call('HSET', KEYS[1], 'answer', ARGV[2]) end
local steps = tonumber(redis.call('HGET', KEYS[1], 'steps') or '0')
if tonumber(ARGV[4]) > steps then redis.call('HSET', KEYS[1], 'steps', ARGV[4]) end
redis.call('XADD', KEYS[2], '*', 'k', 'finished')
redis.call('EXPIRE', KEYS[2], ARGV[6])
return tonumber(final)
"""

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

# A run's turn in its conversation's session, counted once (and never for an unknown
# run, whose marker would create a run hash with no TTL).
TURN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'once:turn', 1) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'turns', 1)
redis.call('HSET', KEYS[2], 'last_run', ARGV[1], 'last_status', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""
