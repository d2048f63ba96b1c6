"""`http_get`: fetch a page from a host the operator allowed.

The URL comes from a model, which may have read it in a prompt written to steer it
(to an internal service, a cloud metadata address, a file). So nothing is fetched unless
its host is in `http_get_allowed_hosts` (exact, case-insensitive), a redirect may only
stay on the same host, and the body read is capped. The URL is parsed once, by httpx,
and that parsed URL is both the one checked and the one fetched: no second parser can
disagree about which host it names.

httpx is imported on the first call, so a process that never fetches never loads it.
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from services.runtime.config import Settings
from services.tools._spec import JSON, ToolContext, ToolError, ToolSpec

if TYPE_CHECKING:
    import httpx

__all__ = ["MAX_BYTES", "MAX_REDIRECTS", "HttpGet"]

MAX_BYTES = 64 * 1024
"""Bytes of a body read at most; the rest is left unread and `truncated` is set."""

MAX_REDIRECTS = 5
"""Same-host redirects followed at most."""

# 408 and 429 say "not now", not "never": another attempt later may succeed.
_RETRYABLE_4XX = (408, 429)


def _host(name: str) -> str:
    return name.strip().strip("[]").rstrip(".").lower()


class HttpGet:
    """The `http_get` tool: GET an allow-listed URL, return status and (capped) text."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self._allowed = frozenset(_host(h) for h in settings.http_get_allowed_hosts if h.strip())
        self._transport = transport  # a test's, else httpx's own
        self._max_bytes = max_bytes
        self.spec = ToolSpec(
            name="http_get",
            description=(
                "Fetch an http(s) URL with GET and return its status, content type and text "
                f"(at most {max_bytes // 1024} KiB; `truncated` says when there was more). "
                "Only hosts allowed by the operator can be fetched."
            ),
            schema={
                "type": "object",
                "properties": {
                    "url": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 2048,
                        "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
                    }
                },
                "required": ["url"],
                "additionalProperties": False,
            },
            timeout_s=settings.tool_timeout_s,
            # Not cacheable: pages change, and the caller asked for the page as it is now.
        )

    def check_url(self, raw: str) -> httpx.URL:
        """The parsed URL when it may be fetched; `ToolError` (not retryable) saying why
        not otherwise."""
        import httpx

        if not self._allowed:
            raise ToolError(
                "http_get may fetch from no host: the operator allows hosts with the "
                "http_get_allowed_hosts setting (AGENTFLUX_HTTP_GET_ALLOWED_HOSTS, "
                "comma-separated host names)"
            )
        try:
            url = httpx.URL(raw)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise ToolError(f"{raw!r} is not a valid URL: {exc}") from None
        if url.scheme not in ("http", "https"):
            raise ToolError(f"only http and https URLs can be fetched, not {url.scheme!r}")
        if url.userinfo:
            raise ToolError("URLs with credentials (user:password@) are not fetched")
        names = {_host(url.host), _host(url.raw_host.decode("ascii", "replace"))}
        if not url.host or not names & self._allowed:
            allowed = ", ".join(sorted(self._allowed))
            raise ToolError(
                f"host {url.host!r} is not allowed (allowed: {allowed}; "
                "setting http_get_allowed_hosts)"
            )
        return url

    async def __call__(self, args: Mapping[str, Any], ctx: ToolContext) -> JSON:
        import httpx

        raw = args.get("url")
        if not isinstance(raw, str):
            raise ToolError('give the URL as a string: {"url": "https://..."}')
        url = self.check_url(raw)
        try:
            # One client per call: a tool has no close hook, and an idle pool would hold
            # sockets. trust_env=False: the worker's proxies and .netrc credentials are
            # not for URLs a model chose.
            async with httpx.AsyncClient(
                transport=self._transport,
                timeout=httpx.Timeout(self.spec.timeout_s),
                follow_redirects=False,
                trust_env=False,
                headers={"user-agent": "agentflux-http_get", "accept-encoding": "identity"},
            ) as client:
                for _ in range(MAX_REDIRECTS + 1):
                    async with client.stream("GET", url) as response:
                        if not response.is_redirect:
                            return await self._result(url, response)
                        url = self._redirect(url, response.headers["location"])
        except httpx.UnsupportedProtocol as exc:
            raise ToolError(f"cannot fetch {url}: {exc}") from exc
        except httpx.DecodingError as exc:
            raise ToolError(f"the body of {url} could not be decoded: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise ToolError(
                f"{url} did not answer within {self.spec.timeout_s:g} s", retryable=True
            ) from exc
        except httpx.HTTPError as exc:  # connection refused or reset, protocol errors
            raise ToolError(
                f"could not fetch {url}: {type(exc).__name__}: {exc}", retryable=True
            ) from exc
        raise ToolError(f"{raw} redirected more than {MAX_REDIRECTS} times")

    def _redirect(self, url: httpx.URL, location: str) -> httpx.URL:
        target = url.join(location)
        if target.scheme not in ("http", "https") or _host(target.host) != _host(url.host):
            raise ToolError(
                f"{url} redirects to {target.scheme}://{target.host}, another host: "
                "redirects are followed only on the same host"
            )
        return target

    async def _result(self, url: httpx.URL, response: httpx.Response) -> JSON:
        status = response.status_code
        if status >= 400:
            retryable = status >= 500 or status in _RETRYABLE_4XX
            raise ToolError(
                f"GET {url} answered {status} {response.reason_phrase}", retryable=retryable
            )
        body, truncated = bytearray(), False
        async for chunk in response.aiter_bytes():
            room = self._max_bytes - len(body)
            if len(chunk) > room:
                body += chunk[:room]
                truncated = True
                break
            body += chunk
        try:
            decoder = codecs.getincrementaldecoder(response.charset_encoding or "utf-8")
        except LookupError:  # a charset Python does not know
            decoder = codecs.getincrementaldecoder("utf-8")
        # A cut body may end inside a character: not final, so the piece is dropped.
        text = decoder("replace").decode(bytes(body), final=not truncated)
        return {
            "url": str(url),
            "status": status,
            "content_type": response.headers.get("content-type", ""),
            "text": text,
            "truncated": truncated,
        }
