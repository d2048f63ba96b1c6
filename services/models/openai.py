"""The `openai` model provider: any OpenAI-compatible /v1/chat/completions endpoint
(OpenAI itself, vLLM, llama.cpp's server, Ollama, LiteLLM...), through the official
`openai` client.

Planning is one chat completion with the offered tools; tool calls become the step's
calls, text a direct answer. A reply whose tool calls cannot be run (arguments that are
not JSON, a tool not offered, arguments that break the tool's schema) goes back to the
model once, with what was wrong; a second such reply fails the plan for good.

Composing streams: the first pieces tell an answer (streamed on as deltas) from tool
calls (another step, while the budget allows; at the last step the model is told not to
call tools at all).

Faults: the client retries timeouts, 429 and 5xx with backoff, waiting as long as a
`Retry-After` (or `retry-after-ms`) asks; every request and every wait is cut at the
run's deadline. What still fails is a `ModelError`: retryable for timeouts, rate limits,
server faults and broken streams; not for a request the endpoint refuses (400, 401,
403, 404, 422: its own message is kept) or a deadline already gone.

Each request is a CLIENT span `chat <model>` with the GenAI semantic-convention
attributes; prompts and answers are never span attributes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from agentflux.v1 import types_pb2
from openai import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncOpenAI,
    AsyncStream,
    OpenAIError,
    omit,
)
from openai.types import CompletionUsage
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
    ChatCompletionToolChoiceOptionParam,
)
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from interceptors import current
from services.models._openai_messages import (
    compose_messages,
    correction,
    plan_messages,
    read_calls,
    tool_params,
)
from services.models._provider import ComposeRequest, Composition, ModelError, Plan, PlanRequest

if TYPE_CHECKING:
    from openai import Omit
    from opentelemetry.trace import TracerProvider

    from services.runtime.config import Settings

__all__ = ["OpenAIProvider"]

log = logging.getLogger(__name__)

# The client refuses to start without a key; with none configured, each request says
# so itself (no Authorization header), so this value is never sent.
_UNSENT_KEY = "unsent"
# Statuses worth asking again for; any other 4xx will fail the same way again.
_RETRYABLE_STATUS = frozenset({408, 409, 429})


def _usage(*parts: CompletionUsage | None) -> types_pb2.Usage:
    total = types_pb2.Usage()
    for part in parts:
        if part is not None:
            total.prompt_tokens += part.prompt_tokens
            total.completion_tokens += part.completion_tokens
            total.total_tokens += part.total_tokens or part.prompt_tokens + part.completion_tokens
    return total


def _endpoint_message(exc: APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
        return str(body["message"])
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return exc.message


class OpenAIProvider:
    """A model behind an OpenAI-compatible endpoint (see the module doc). One instance
    serves every run; `aclose()` releases its connections."""

    name: str = "openai"

    def __init__(
        self, settings: Settings, *, tracer_provider: TracerProvider | None = None
    ) -> None:
        if not settings.model_base_url or not settings.model_name:
            raise ValueError(
                "the openai model provider needs AGENTFLUX_MODEL_BASE_URL and "
                "AGENTFLUX_MODEL_NAME set"
            )
        self._model = settings.model_name
        self._base_url = settings.model_base_url
        self._timeout = settings.model_timeout_s
        self._max_retries = settings.model_max_retries
        self._temperature = settings.model_temperature
        self._key = settings.model_api_key.get_secret_value()
        self._tenant_keys = {
            tenant: key.get_secret_value() for tenant, key in settings.model_tenant_api_keys.items()
        }
        self._client = AsyncOpenAI(
            api_key=self._key or _UNSENT_KEY,
            base_url=settings.model_base_url,
            timeout=settings.model_timeout_s,
            max_retries=settings.model_max_retries,
        )
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        url = urlsplit(settings.model_base_url)
        self._server = url.hostname or ""
        self._port = url.port or (443 if url.scheme == "https" else 80)

    async def aclose(self) -> None:
        """Closes the client's connections."""
        await self._client.close()

    # -- the provider -----------------------------------------------------------------

    async def plan(self, request: PlanRequest) -> Plan:
        """The calls of step `request.step`, or a direct answer; malformed calls are
        returned to the model once before the plan fails (not retryable)."""
        headers = self._auth(request.tenant_id)
        messages = plan_messages(request)
        tools = tool_params(request.tools)
        spent: list[CompletionUsage | None] = []
        for attempt in range(2):
            completion = await self._complete(headers, messages, tools)
            spent.append(completion.usage)
            if not completion.choices:
                raise ModelError("the model's reply has no choices", retryable=True)
            message = completion.choices[0].message
            tool_calls = message.tool_calls or []
            if not tool_calls:
                text = message.content or message.refusal or ""
                if not text.strip():
                    raise ModelError(
                        "the model replied with neither tool calls nor text", retryable=True
                    )
                return Plan(answer=text, usage=_usage(*spent))
            calls, wrong = read_calls(tool_calls, request.tools)
            if not wrong:
                return Plan(calls=calls, usage=_usage(*spent))
            if attempt:
                problems = "; ".join(f"{bad.name}: {bad.reason}" for bad in wrong)
                raise ModelError(
                    f"the model's tool calls were malformed again after a correction: {problems}",
                    retryable=False,
                )
            log.info(
                "the model's tool calls were malformed (%s); asking it again",
                "; ".join(f"{bad.name}: {bad.reason}" for bad in wrong),
            )
            messages = [*messages, *correction(message.content, tool_calls, wrong)]
        raise AssertionError("unreachable")  # pragma: no cover

    async def compose(self, request: ComposeRequest) -> Composition:
        """An answer streamed as deltas, or another step when the model calls tools
        (offered only while `step + 1 < max_steps`)."""
        may_go_on = request.step + 1 < request.max_steps and bool(request.tools)
        tools = tool_params(request.tools)
        choice: ChatCompletionToolChoiceOptionParam | Omit = omit
        if tools and not may_go_on:
            choice = "none"
        headers = self._auth(request.tenant_id)
        messages = compose_messages(request, may_go_on=may_go_on)
        span = self._start()
        try:
            stream = await self._open(headers, messages, tools, choice)
        except ModelError as exc:
            self._failed(span, exc)
            raise
        seen = _Seen()
        try:
            while not (seen.pieces or seen.tool_calls):
                chunk = await self._next(stream)
                if chunk is None:
                    break
                seen.take(chunk)
        except ModelError as exc:
            await stream.close()
            self._failed(span, exc)
            raise
        if seen.tool_calls:
            # Drained rather than closed: the usage comes in the stream's last chunk, and
            # the run and its tenant are charged from it. A stream that breaks here costs
            # only that figure: the planner asks for the next step anyway.
            with contextlib.suppress(ModelError):
                while (chunk := await self._next(stream)) is not None:
                    seen.take(chunk)
            await stream.close()
            self._answered(span, seen)
            return Composition(next_step=True, usage=seen.usage())
        if not seen.pieces:
            await stream.close()
            nothing = (
                ModelError("the model's answer is empty", retryable=True)
                if seen.finish_reasons
                else ModelError(_BROKEN, retryable=True)
            )
            self._failed(span, nothing)
            raise nothing
        composition = Composition(next_step=False)
        composition.deltas = self._deltas(stream, span, seen, composition)
        return composition

    # -- requests -----------------------------------------------------------------------

    def _auth(self, tenant_id: str) -> dict[str, str | Omit]:
        """The Authorization of a request for `tenant_id` (the run's, when the request
        names none): the tenant's own key, else the provider's, else none at all."""
        if not tenant_id:
            context = current()
            tenant_id = context.tenant_id if context is not None else ""
        key = self._tenant_keys.get(tenant_id) or self._key
        return {"Authorization": f"Bearer {key}" if key else omit}

    def _left(self) -> float | None:
        """Seconds left before the run's deadline (None without one); raises once none is."""
        context = current()
        left = context.remaining() if context is not None else None
        if left is not None and left <= 0:
            raise _deadline()
        return left

    def _request_timeout(self, left: float | None) -> float:
        return self._timeout if left is None else min(self._timeout, left)

    async def _complete(
        self,
        headers: dict[str, str | Omit],
        messages: list[ChatCompletionMessageParam],
        tools: list[ChatCompletionFunctionToolParam],
    ) -> ChatCompletion:
        span = self._start()
        try:
            left = self._left()
            timeout = self._request_timeout(left)
            try:
                async with asyncio.timeout(left):
                    completion = await self._client.chat.completions.create(
                        model=self._model,
                        messages=messages,
                        tools=tools or omit,
                        temperature=self._temperature if self._temperature is not None else omit,
                        timeout=timeout,
                        extra_headers=headers,
                    )
            except TimeoutError:
                raise _deadline() from None
            except OpenAIError as exc:
                raise self._fault(exc, timeout) from exc
        except ModelError as exc:
            self._failed(span, exc)
            raise
        seen = _Seen()
        seen.model = completion.model
        seen.finish_reasons = [choice.finish_reason for choice in completion.choices]
        seen.last_usage = completion.usage
        self._answered(span, seen)
        return completion

    async def _open(
        self,
        headers: dict[str, str | Omit],
        messages: list[ChatCompletionMessageParam],
        tools: list[ChatCompletionFunctionToolParam],
        choice: ChatCompletionToolChoiceOptionParam | Omit,
    ) -> AsyncStream[ChatCompletionChunk]:
        left = self._left()
        timeout = self._request_timeout(left)
        try:
            async with asyncio.timeout(left):
                return await self._client.chat.completions.create(
                    model=self._model,
                    messages=messages,
                    tools=tools or omit,
                    tool_choice=choice,
                    temperature=self._temperature if self._temperature is not None else omit,
                    stream=True,
                    stream_options={"include_usage": True},
                    timeout=timeout,
                    extra_headers=headers,
                )
        except TimeoutError:
            raise _deadline() from None
        except OpenAIError as exc:
            raise self._fault(exc, timeout) from exc

    async def _next(self, stream: AsyncStream[ChatCompletionChunk]) -> ChatCompletionChunk | None:
        """The stream's next chunk (None at its end), waiting no later than the deadline."""
        left = self._left()
        try:
            async with asyncio.timeout(left):
                return await anext(stream)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise _deadline() from None
        except APIConnectionError as exc:
            # Mid-answer, the SDK does not retry: the caller may, from the start.
            raise ModelError(f"{_BROKEN}: {exc.__cause__ or exc}", retryable=True) from exc
        except OpenAIError as exc:
            raise self._fault(exc, self._request_timeout(left)) from exc

    async def _deltas(
        self,
        stream: AsyncStream[ChatCompletionChunk],
        span: Span,
        seen: _Seen,
        composition: Composition,
    ) -> AsyncIterator[str]:
        ended = False
        try:
            for piece in seen.pieces:
                yield piece
            while True:
                chunk = await self._next(stream)
                if chunk is None:
                    break
                for piece in seen.take(chunk):
                    yield piece
            if not seen.finish_reasons:
                raise ModelError(_BROKEN, retryable=True)
            composition.usage = seen.usage()
            self._answered(span, seen)
            ended = True
        except ModelError as exc:
            self._failed(span, exc)
            ended = True
            raise
        finally:
            await stream.close()
            if not ended:
                # The caller stopped reading: the span still ends, with what was seen.
                self._answered(span, seen)

    def _fault(self, exc: OpenAIError, timeout: float) -> ModelError:
        retries = f"after {self._max_retries} retries" if self._max_retries else "no retries"
        if isinstance(exc, APITimeoutError):
            return ModelError(
                f"the model did not answer within {timeout:g} s ({retries})", retryable=True
            )
        if isinstance(exc, APIConnectionError):
            return ModelError(
                f"could not reach the model at {self._base_url} ({retries}): "
                f"{exc.__cause__ or exc}",
                retryable=True,
            )
        if isinstance(exc, APIStatusError):
            status = exc.status_code
            retryable = status in _RETRYABLE_STATUS or status >= 500
            after = f" ({retries})" if retryable else ""
            return ModelError(
                f"the model endpoint answered {status}: {_endpoint_message(exc)}{after}",
                retryable=retryable,
            )
        return ModelError(f"the model call failed: {exc}", retryable=True)

    # -- spans --------------------------------------------------------------------------

    def _start(self) -> Span:
        attributes: dict[str, str | int | float] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": self._model,
            "server.address": self._server,
            "server.port": self._port,
        }
        if self._temperature is not None:
            attributes["gen_ai.request.temperature"] = self._temperature
        return self._tracer.start_span(
            f"chat {self._model}", kind=SpanKind.CLIENT, attributes=attributes
        )

    @staticmethod
    def _answered(span: Span, seen: _Seen) -> None:
        if seen.model:
            span.set_attribute("gen_ai.response.model", seen.model)
        if seen.last_usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", seen.last_usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", seen.last_usage.completion_tokens)
        reasons = [reason for reason in seen.finish_reasons if reason]
        if reasons:
            span.set_attribute("gen_ai.response.finish_reasons", reasons)
        span.end()

    @staticmethod
    def _failed(span: Span, exc: ModelError) -> None:
        cause = exc.__cause__
        if isinstance(cause, APIStatusError):
            kind = str(cause.status_code)
        elif isinstance(cause, OpenAIError):
            kind = type(cause).__name__
        else:
            kind = type(exc).__name__
        span.set_attribute("error.type", kind)
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, exc.message))
        span.end()


_BROKEN = "the model's stream ended before its answer did"


def _deadline() -> ModelError:
    return ModelError("the run's deadline passed before the model answered", retryable=False)


class _Seen:
    """What a streamed reply has shown so far."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.tool_calls = False
        self.finish_reasons: Sequence[str | None] = []
        self.model = ""
        self.last_usage: CompletionUsage | None = None

    def take(self, chunk: ChatCompletionChunk) -> list[str]:
        """Notes `chunk`; returns its text pieces."""
        self.model = chunk.model or self.model
        if chunk.usage is not None:
            # With include_usage the last chunk carries the whole reply's usage; some
            # servers repeat a running total on every chunk, and the last one still wins.
            self.last_usage = chunk.usage
        pieces = []
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            if choice.delta.tool_calls:
                self.tool_calls = True
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                self.finish_reasons = [choice.finish_reason]
        self.pieces += pieces
        return pieces

    def usage(self) -> types_pb2.Usage:
        return _usage(self.last_usage)
