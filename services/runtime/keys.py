"""Where every record of the mesh lives in Redis: one place, so no key is spelled twice
(the services, the run records and the tools all read it from here)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys"]


@dataclass(frozen=True, slots=True)
class Keys:
    """Redis keys under `<namespace>af:<tenant>:`; tenant ids are checked ids (no `:`)."""

    namespace: str = ""

    def _base(self, tenant: str) -> str:
        return f"{self.namespace}af:{tenant}:"

    def run(self, tenant: str, run_id: str) -> str:
        """Hash: the run as created (`run`), its status, answer, usage, markers."""
        return f"{self._base(tenant)}run:{run_id}"

    def events(self, tenant: str, run_id: str) -> str:
        """Stream: the run's events, in order; the entry id is the event id."""
        return f"{self._base(tenant)}events:{run_id}"

    def runs(self, tenant: str) -> str:
        """Sorted set: the tenant's run ids by creation time (milliseconds)."""
        return f"{self._base(tenant)}runs"

    def in_flight(self, tenant: str) -> str:
        """Sorted set: the tenant's runs not yet ended, by creation time (milliseconds)."""
        return f"{self._base(tenant)}inflight"

    def budget(self, tenant: str, period: int) -> str:
        """Hash: the tenant's tokens `used` and `reserved` in budget period `period`
        (the period's number since the epoch)."""
        return f"{self._base(tenant)}budget:{period}"

    def rate(self, tenant: str) -> str:
        """Sorted set: the tenant's calls admitted in the rate window, by time (ms)."""
        return f"{self._base(tenant)}rate"

    def request(self, tenant: str, request_id: str) -> str:
        """String: the run a Submit `request_id` started."""
        return f"{self._base(tenant)}request:{request_id}"

    def step(self, tenant: str, run_id: str, step: int) -> str:
        """Hash: tool_call_id -> ToolResult of one step."""
        return f"{self._base(tenant)}step:{run_id}:{step}"

    def memory(self, tenant: str, conversation_id: str) -> str:
        """List: a conversation's short-lived memory, newest first."""
        return f"{self._base(tenant)}memory:{conversation_id}"

    def session(self, tenant: str, conversation_id: str) -> str:
        """Hash: a conversation's session state (turns so far, last run)."""
        return f"{self._base(tenant)}session:{conversation_id}"

    def result(self, tenant: str, run_id: str, tool_call_id: str) -> str:
        """String: the recorded ToolResult of one tool call (re-emitted, never re-run)."""
        return f"{self._base(tenant)}result:{run_id}:{tool_call_id}"

    def artifact(self, tenant: str, key: str) -> str:
        """String: a cached tool output, by the hash of tool name and canonical arguments."""
        return f"{self._base(tenant)}artifact:{key}"

    def guard(self, service: str) -> str:
        """Namespace of a service's idempotency guard."""
        return f"{self.namespace}af:guard:{service}"

    def lock(self, name: str) -> str:
        """A lock (and `<lock>:token`, its fencing counter)."""
        return f"{self.namespace}af:lock:{name}"

    # API keys (services.runtime.apikeys) live under `af:auth.`: a tenant id has no `.`,
    # so no tenant's records can ever share these names.

    def api_key(self, digest: str) -> str:
        """Hash: the record of the API key whose SHA-256 hex digest is `digest` (tenant,
        key id, label, created, revoked); never the key itself."""
        return f"{self.namespace}af:auth.key:{digest}"

    def api_key_id(self, key_id: str) -> str:
        """String: the digest of the API key with this public key id (list, revoke)."""
        return f"{self.namespace}af:auth.id:{key_id}"

    def tenant_keys(self, tenant: str) -> str:
        """Sorted set: the key ids of a tenant's API keys, by creation time (ms)."""
        return f"{self.namespace}af:auth.tenant:{tenant}"

    def key_tenants(self) -> str:
        """Set: the tenants that have API keys."""
        return f"{self.namespace}af:auth.tenants"
