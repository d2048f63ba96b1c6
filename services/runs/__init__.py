"""A run's shared records in Redis: the run itself, its event stream and its steps.

Several services write to one run (the gateway creates it, the planner plans it, the
workers run its tools, the composer or the planner ends it) and the gateway reads it.
Every write that must happen once is a Lua script, so a redelivered message (at-least-
once everywhere) never appends an event twice, never ends a run twice, and never lets
a late writer overwrite how a run ended:

- `RunStore.create`: the run, its `accepted` event and the caller's `request_id`, at
  once; a retried `request_id` finds the first run.
- `RunStore.append_once`: an event under a marker (planned step, answer delta, tool
  started or finished), appended at most once.
- `RunStore.finish`: the terminal state, and the `finished` event, at most once; a
  cancellation requested before it wins.
- `RunStore.record_result`: a step's tool results, gathered atomically; exactly one
  caller learns that the step is complete.
- `TokenBudget.reserve`/`settle`: tokens reserved before each model call against the
  tenant's and the run's budgets, settled once after it.

Writes that need no answer of each other go in one round trip (`run_together`, with the
`*_call` forms of the writes), and `RunStore.snapshot` reads what a handler decides on
(and records or marks what it must first) in one.

Keys live under `<namespace>af:<tenant>:`, so tenants never share a key.
"""

from services.runs._budget import (
    OUTPUT_ALLOWANCE,
    BudgetExceededError,
    TokenBudget,
    estimate_tokens,
)
from services.runs._ending import RunEnder
from services.runs._starting import MAX_PROMPT_BYTES, resolve_limits, run_of_event
from services.runs._store import (
    TERMINAL,
    BudgetSpentError,
    Finished,
    RequestReusedError,
    RunSnapshot,
    RunStore,
    StreamGapError,
    TooManyRunsError,
    appended,
    completion_of,
    counted,
    finished,
    finished_of,
    is_event_id,
)
from services.runs._together import ScriptCall, run_together

__all__ = [
    "MAX_PROMPT_BYTES",
    "OUTPUT_ALLOWANCE",
    "TERMINAL",
    "BudgetExceededError",
    "BudgetSpentError",
    "Finished",
    "RequestReusedError",
    "RunEnder",
    "RunSnapshot",
    "RunStore",
    "ScriptCall",
    "StreamGapError",
    "TokenBudget",
    "TooManyRunsError",
    "appended",
    "completion_of",
    "counted",
    "estimate_tokens",
    "finished",
    "finished_of",
    "is_event_id",
    "resolve_limits",
    "run_of_event",
    "run_together",
]
