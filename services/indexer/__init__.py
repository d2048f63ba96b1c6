"""The indexer: the retrieval index of finished answers, a projection of `agent.completed`.

`IndexerService` consumes `AgentCompleted` events and indexes the answers of completed
runs in SQLite FTS5; `ResponseIndexService.SearchIndex` (gRPC) searches one tenant's
answers, best first (bm25), with snippets, pages and a conversation filter. The gateway
and the `retrieve` tool call it with the generated stub (`agentflux.v1.index_pb2_grpc`);
there is no client code here.

Replicas. Every replica is a consumer group of its own (`<ns>agentflux.indexer.<replica>`)
with a file of its own (`<index_dir>/<ns><replica>.db`) and indexes the whole topic, so
any replica answers any search. Scaling out means adding read replicas, each with its
own `AGENTFLUX_INDEXER_REPLICA` (the host name when empty) and port: they do not share
the indexing work, they share the searches. Two processes with one replica name would
split the partitions between them and each index half; start refuses the second when
it creates a new file, but give every replica its own name.

Rebuilding. A replica that starts on a new file reads `agent.completed` from the
beginning (`auto.offset.reset` is earliest, and the new file resets its group and its
guard records) until it has caught up, answering searches meanwhile with what it has.
So the topic's retention (`AGENTFLUX_KAFKA_RETENTION_MS`, 30 days by default) is how
far back a new replica's index reaches: an index of every answer ever given needs
`retention.ms=-1` (or tiered storage) on `agent.completed`. To rebuild a replica,
stop it, delete its file and start it. The `-wal` and `-shm` files beside the index
belong to it.

Health: NOT_SERVING until `start()` has finished and from the moment a stop begins;
server reflection lists the search, health and reflection services."""

from services.indexer._projection import IndexStats, content_digest
from services.indexer._server import SERVICE_NAME
from services.indexer._service import IndexerService, replica_name

__all__ = ["SERVICE_NAME", "IndexStats", "IndexerService", "content_digest", "replica_name"]
