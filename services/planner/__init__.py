"""The planner: turns each `AgentRequested` into the tool tasks of one step.

A Kafka consumer group on `agent.requested` (several processes share the partitions).
For each request it loads the conversation's session and short-lived memory from
Redis, asks the model provider for the step's plan, checks the plan against the run's
bounds (tools per step, tool calls per run; over a bound the run fails with the reason,
it never floods the queue), records the `planned` event and publishes one `ToolTask`
per call to RabbitMQ with the run's priority, all at once. A plan without tool calls is
a direct answer: the planner ends the run itself. A run whose cancellation was
requested is ended CANCELLED instead of planned.
"""

from services.planner._service import PlannerService

__all__ = ["PlannerService"]
