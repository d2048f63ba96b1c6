"""Thin adapters over the broker and cache clients.

Each module wraps one client library with agentflux's defaults (idempotent producer and
manual commits for Kafka, publisher confirms and manual acks for RabbitMQ, hiredis for
Redis, short timeouts for Memcached) and nothing else: context propagation, tracing and
idempotency are layered on top by `interceptors`.
"""
