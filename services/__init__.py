"""agentflux services: gateway, planner, worker, composer, indexer and their shared runtime."""
