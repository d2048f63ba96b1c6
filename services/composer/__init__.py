"""The composer: gathers a step's tool results and ends or continues the run.

A Kafka consumer group on `agent.tool_called`. Each result is added to its step in
Redis atomically; the one result that completes the step (the step's
`step_tool_count` is known) lets the composer go on: a run whose cancellation was
requested ends CANCELLED; a step with a failed tool ends the run FAILED with the
tools' reasons; otherwise the model composes, from the prompt template read through
Memcached and the results of every step so far (the earlier ones read back from their
step records), either a continuation (another `AgentRequested` for the same run and
conversation, within the run's step budget) or the answer, streamed into the run's
stream in pieces, after which the run ends COMPLETED and `AgentCompleted` is emitted
(the response store and the index are projections of it).
"""

from services.composer._service import ComposerService

__all__ = ["ComposerService"]
