"""The worker: runs tool tasks from RabbitMQ and reports each result to Kafka.

Competing consumers of the tool-task queue (manual acks, up to `worker_prefetch` at
once, higher priorities first). For each task: a result already recorded for the call
is emitted again, never re-run (a crash between the record and the ack); a run whose
cancellation was requested gets a CANCELLED result without running the tool;
otherwise the tool's arguments are checked against its JSON schema, its metadata read
through Memcached, an exclusive tool takes a lock with a fencing token, and the tool
runs under its timeout. A cacheable tool's output is kept by the hash of its name and
canonical arguments. The result is recorded, `ToolCalled` is emitted and confirmed by
Kafka, and only then is the task acked. A failure that may pass is retried through
the delay tiers; after the last attempt (or at once, for one that cannot pass) a failed
`ToolCalled` is emitted so the run still ends, and the task goes to the dead-letter
queue with the reason.
"""

from services.worker._service import WorkerService

__all__ = ["WorkerService"]
