"""An OpenAI-compatible chat-completions server for tests: real HTTP/1.1 on a real socket.

In a test::

    with FakeOpenAI([{"content": "hello"}]) as fake:
        ...  # point the client at fake.url (http://127.0.0.1:<port>/v1)
        assert fake.requests[0].body["model"] == "m"

As a process, beside the mesh in end-to-end tests::

    python -m tests.fakes.openai_server --port N --script FILE.json [--record FILE.jsonl]

It prints `OPENAI_URL=http://127.0.0.1:<port>/v1` once it accepts connections, serves
until SIGTERM or SIGINT, appends each request it records to `--record` (one JSON object
a line: method, path, headers, body, time) and also lists them at `GET /_fake/requests`.

Endpoints: `POST <anything>/chat/completions` answers from the script; `GET .../models`
lists the models the script names; anything else is a 404 in the API's error format.

The script is a queue of replies, served one per request in order, or (in a test) a
handler given each parsed request that returns the reply. A script file is JSON:

    {"replies": [<reply>, ...], "then": <reply>}

`then` (optional) answers every request after the queue is spent; without it such a
request gets a 400 (`fake_script_spent`), so an unplanned call fails loudly. A bare
list is taken as `replies`. Each reply is an object; every key is optional:

    content        the answer's text ("" when the reply is tool calls)
    pieces         the answer's streamed pieces, in order (default: `content` split after
                   each space); they join to the content of a non-streamed reply
    tool_calls     [{"id", "name", "arguments"}]: `arguments` a string sent as it is (so
                   malformed JSON can be scripted) or any JSON value, sent encoded; `id`
                   defaults to call_<n>. Streamed, each call's arguments are split across
                   two chunks after the chunk that names it.
    finish_reason  default "tool_calls" with tool calls, else "stop"
    usage          {"prompt_tokens", "completion_tokens"} (total added); default: words
                   of the request's message texts, and of the answer (or arguments)
    model          the response's model; default the request's
    status         the HTTP status; default 200, or 500 with `error`
    error          {"message", "type", "code"}: sent as {"error": {...}} with `status`
    headers        extra response headers, e.g. {"Retry-After": "1"} or
                   {"retry-after-ms": "20"}
    delay          seconds to wait before answering (a slow endpoint)
    chunk_delay    seconds to wait before each streamed chunk
    drop_after     streamed: drop the connection after this many chunks, mid-answer (no
                   finish, no [DONE], no end of the chunked body)

A request asks for a stream with `"stream": true`; the same reply is then sent as
server-sent events (`data: {...}` chunks, then `data: [DONE]`), with a last usage-only
chunk when `stream_options.include_usage` is true, as the API does.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["FakeOpenAI", "Handler", "Recorded", "Reply"]

Reply = Mapping[str, Any]


@dataclass(frozen=True)
class Recorded:
    """One request as the server got it. `at` is `time.monotonic()` on arrival (before
    any scripted delay), `time` the wall clock."""

    method: str
    path: str
    headers: Mapping[str, str]  # lower-cased names
    body: Any
    at: float
    time: float = field(default_factory=time.time)

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "headers": dict(self.headers),
            "body": self.body,
            "time": self.time,
        }


Handler = Callable[[Recorded], Reply]


class _DroppedError(Exception):
    """The scripted mid-stream drop."""


def _words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(item) for item in value)
    if isinstance(value, dict):
        return sum(_words(item) for item in value.values())
    return 0


class FakeOpenAI:
    """The server (see the module doc). Starts on `start()` or entering a `with` block,
    on 127.0.0.1 and a free port unless told otherwise."""

    def __init__(
        self,
        replies: Iterable[Reply] = (),
        *,
        handler: Handler | None = None,
        then: Reply | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        record: Path | None = None,
    ) -> None:
        self._host = host
        self._replies: deque[Reply] = deque(replies)
        self._handler = handler
        self._then = then
        self._record = record
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        self._closing = threading.Event()
        self._server = _Server((host, port), _Endpoint, self)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL a client is given (up to /v1)."""
        return f"http://{self._host}:{self.port}/v1"

    @property
    def requests(self) -> list[Recorded]:
        """The requests so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def script(self, *replies: Reply) -> None:
        """Queues more replies."""
        with self._lock:
            self._replies.extend(replies)

    def start(self) -> FakeOpenAI:
        self._thread = threading.Thread(
            # A short poll: closing (at each test's end) waits for the loop to notice.
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-openai",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stops serving; slow replies still waiting give up at once."""
        self._closing.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- used by the request handler ---------------------------------------------------

    def _note(self, request: Recorded) -> None:
        with self._lock:
            self._requests.append(request)
            if self._record is not None:
                with self._record.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(request.as_json()) + "\n")

    def _reply_to(self, request: Recorded) -> Reply:
        if self._handler is not None:
            return self._handler(request)
        with self._lock:
            if self._replies:
                return self._replies.popleft()
        if self._then is not None:
            return self._then
        return {
            "status": 400,
            "error": {
                "message": "the fake has no scripted reply left for this request",
                "type": "fake_script_spent",
                "code": "fake_script_spent",
            },
        }

    def _models(self) -> list[str]:
        with self._lock:
            replies = [*self._replies, *([self._then] if self._then else [])]
        return sorted({str(reply["model"]) for reply in replies if "model" in reply})

    def _wait(self, seconds: float) -> None:
        self._closing.wait(seconds)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], fake: FakeOpenAI
    ) -> None:
        self.fake = fake
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (a timeout, a deadline) is part of the tests, not news.
        error = sys.exc_info()[1]
        if isinstance(error, OSError | _DroppedError):
            return
        super().handle_error(request, client_address)


class _Endpoint(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are recorded; stderr stays for real problems

    # -- routing ------------------------------------------------------------------------

    def do_GET(self) -> None:
        fake = self.server.fake
        if self.path.rstrip("/").endswith("/_fake/requests"):
            self._json(200, [request.as_json() for request in fake.requests])
        elif self.path.rstrip("/").endswith("/models"):
            models = [{"id": m, "object": "model", "owned_by": "fake"} for m in fake._models()]
            self._json(200, {"object": "list", "data": models})
        else:
            self._error(404, f"no route GET {self.path}", "not_found")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = raw.decode("utf-8", "replace")
        fake = self.server.fake
        request = Recorded(
            method="POST",
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
            at=time.monotonic(),
        )
        fake._note(request)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._error(404, f"no route POST {self.path}", "not_found")
            return
        if not isinstance(body, dict):
            self._error(400, "the request body is not a JSON object", "invalid_request_error")
            return
        reply = fake._reply_to(request)
        if reply.get("delay"):
            fake._wait(float(reply["delay"]))
        if "error" in reply or int(reply.get("status", 200)) >= 400:
            error = dict(reply.get("error") or {"message": "scripted failure"})
            error.setdefault("type", "server_error")
            error.setdefault("code", None)
            status = int(reply.get("status", 500))
            self._json(status, {"error": error}, reply.get("headers", {}))
            return
        if body.get("stream"):
            self._stream(body, reply)
        else:
            self._json(200, _completion(body, reply), reply.get("headers", {}))

    # -- writing ------------------------------------------------------------------------

    def _json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, str(value))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _error(self, status: int, message: str, kind: str) -> None:
        self._json(status, {"error": {"message": message, "type": kind, "code": kind}})

    def _stream(self, body: Mapping[str, Any], reply: Reply) -> None:
        fake = self.server.fake
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in reply.get("headers", {}).items():
            self.send_header(name, str(value))
        self.end_headers()
        drop_after = reply.get("drop_after")
        for sent, event in enumerate(_chunks(body, reply)):
            if drop_after is not None and sent >= int(drop_after):
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                raise _DroppedError
            if reply.get("chunk_delay"):
                fake._wait(float(reply["chunk_delay"]))
            data = f"data: {event}\n\n".encode()
            self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


# -- the wire format ---------------------------------------------------------------------


def _calls(reply: Reply) -> list[dict[str, str]]:
    calls = []
    for index, call in enumerate(reply.get("tool_calls") or ()):
        arguments = call.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        calls.append(
            {"id": call.get("id", f"call_{index}"), "name": call["name"], "arguments": arguments}
        )
    return calls


def _pieces(reply: Reply) -> list[str]:
    if "pieces" in reply:
        return [str(piece) for piece in reply["pieces"]]
    words = str(reply.get("content", "")).split(" ")
    pieces = [word + " " for word in words[:-1]] + [words[-1]]
    return [piece for piece in pieces if piece]


def _usage(body: Mapping[str, Any], reply: Reply) -> dict[str, int]:
    given = reply.get("usage")
    if given is not None:
        prompt, completion = int(given["prompt_tokens"]), int(given["completion_tokens"])
    else:
        messages = body.get("messages") or []
        prompt = sum(_words(message.get("content")) for message in messages)
        written = "".join(_pieces(reply)) + "".join(c["arguments"] for c in _calls(reply))
        completion = len(written.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish(reply: Reply) -> str:
    return str(reply.get("finish_reason") or ("tool_calls" if _calls(reply) else "stop"))


def _completion(body: Mapping[str, Any], reply: Reply) -> dict[str, Any]:
    calls = _calls(reply)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(_pieces(reply)) or None}
    if calls:
        message["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": call["arguments"]},
            }
            for call in calls
        ]
    return {
        "id": f"chatcmpl-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.get("model", body.get("model", "")),
        "choices": [
            {"index": 0, "message": message, "finish_reason": _finish(reply), "logprobs": None}
        ],
        "usage": _usage(body, reply),
    }


def _chunks(body: Mapping[str, Any], reply: Reply) -> Iterator[str]:
    """The streamed reply's events: role, content pieces or tool-call deltas, the finish,
    the usage chunk when asked for, and [DONE]."""
    ident = f"chatcmpl-{time.monotonic_ns()}"
    model = reply.get("model", body.get("model", ""))
    with_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        payload: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if with_usage:
            payload["usage"] = None
        return json.dumps(payload)

    yield chunk({"role": "assistant", "content": ""})
    for piece in _pieces(reply):
        yield chunk({"content": piece})
    for index, call in enumerate(_calls(reply)):
        named = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": ""},
        }
        yield chunk({"tool_calls": [named]})
        half = len(call["arguments"]) // 2
        for part in (call["arguments"][:half], call["arguments"][half:]):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
    yield chunk({}, _finish(reply))
    if with_usage:
        yield json.dumps(
            {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [],
                "usage": _usage(body, reply),
            }
        )
    yield "[DONE]"


# -- as a process ------------------------------------------------------------------------


def _load(path: Path) -> tuple[list[Reply], Reply | None]:
    script = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(script, list):
        return script, None
    return list(script.get("replies", [])), script.get("then")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--script", type=Path, required=True)
    parser.add_argument("--record", type=Path)
    args = parser.parse_args(argv)
    replies, then = _load(args.script)
    fake = FakeOpenAI(replies, then=then, host=args.host, port=args.port, record=args.record)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with fake:
        print(f"OPENAI_URL={fake.url}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
