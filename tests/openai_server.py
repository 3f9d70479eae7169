"""A real OpenAI-compatible HTTP server on loopback, for tests and benchmarks.

Not a test module: import it as ``from openai_server import OpenAIServer, Reply`` (pytest puts
``tests/`` on ``sys.path``). It serves ``POST /v1/chat/completions`` (plain and streaming) and
``GET /v1/models`` on ``127.0.0.1`` at a free port, from a background thread::

    with OpenAIServer() as server:
        server.script([(429, {"Retry-After": "1"}), (500, {}), (200, "hello")])
        ...  # call server.url + "/v1" with any OpenAI client
        assert server.attempts == 3

Each request takes the next scripted reply; when the script is empty the ``handler``
callback (if any) computes the reply from the request, else ``default`` answers. Every
request is recorded (body, headers, time) so tests can count upstream attempts.

A reply may carry tool calls (``Reply(tool_calls=[ScriptedCall(...)])``), answered in
``message.tool_calls`` or, streamed, as OpenAI's tool-call deltas. :func:`tool_responder`
is a rule-based handler for agent loops: it calls the tool a rule names while no tool
result is in the messages, then answers in text with the result.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class ScriptedCall:
    """One tool call a reply makes. A dict ``arguments`` goes out as its JSON text; a string
    goes out as is (for arguments that are not JSON)."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str | None = None
    """None: the server makes one up."""

    def wire(self) -> dict[str, Any]:
        args = self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)
        return {
            "id": self.id or f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": self.name, "arguments": args},
        }


@dataclass
class Reply:
    """One scripted answer.

    ``status`` 200 answers a chat completion with ``text``; any other status answers an
    OpenAI-shaped error body (``error_message``, ``error_code``). ``body`` replaces the whole
    JSON body; ``delay_s`` sleeps before answering (for timeouts); ``drop`` closes the
    connection without any answer. ``prompt_tokens``/``completion_tokens`` override the
    word counts reported in ``usage``.
    """

    status: int = 200
    text: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    delay_s: float = 0.0
    drop: bool = False
    finish_reason: str = "stop"
    error_message: str | None = None
    error_code: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tool_calls: list[ScriptedCall] | None = None
    """Calls the answer makes (``finish_reason`` should then be ``"tool_calls"``)."""
    stall_after_chunks: int | None = None
    """Streamed: after this many chunks (0: right after the headers; the first chunk is the
    role-only one) sleep ``stall_s`` before sending the rest."""
    stall_s: float = 0.0


@dataclass
class RecordedRequest:
    """What the server received: parsed JSON body and lower-cased headers."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float
    sent_chunks: int = 0
    """Streamed: how many chunks went out before the stream ended or the client hung up."""

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages") or [])

    @property
    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return _content_text(message.get("content"))
        return ""

    @property
    def tool_names(self) -> list[str]:
        """Names of the tools the request offers."""
        return [
            str((t.get("function") or {}).get("name"))
            for t in self.body.get("tools") or []
            if isinstance(t, dict)
        ]

    @property
    def tool_results(self) -> list[dict[str, Any]]:
        """The request's ``tool`` messages."""
        return [m for m in self.messages if m.get("role") == "tool"]


ReplyLike = Reply | str | tuple[Any, ...]
Handler = Callable[[RecordedRequest], ReplyLike | None]


def to_reply(item: ReplyLike) -> Reply:
    """Normalise the short forms a script accepts.

    ``"text"`` -> 200 with that text; ``(status, headers_dict)``; ``(status, "text")``
    (an answer for 200, an error message otherwise); ``(status, headers, text)``.
    """
    if isinstance(item, Reply):
        return item
    if isinstance(item, str):
        return Reply(text=item)
    if isinstance(item, tuple) and item and isinstance(item[0], int):
        status = item[0]
        headers: dict[str, str] = {}
        text: str | None = None
        for part in item[1:]:
            if isinstance(part, dict):
                headers = {str(k): str(v) for k, v in part.items()}
            elif isinstance(part, str):
                text = part
            else:
                raise TypeError(f"cannot read {part!r} in scripted reply {item!r}")
        if status == 200:
            return Reply(status=status, headers=headers, text=text or "")
        return Reply(status=status, headers=headers, error_message=text)
    raise TypeError(f"cannot read scripted reply {item!r}")


def echo_last_user(request: RecordedRequest) -> Reply:
    """A handler that answers with the last user message."""
    return Reply(text=request.last_user_text)


@dataclass
class ToolRule:
    """Call ``calls`` when the last user message contains ``when`` ("" matches any)."""

    calls: list[ScriptedCall]
    when: str = ""


def tool_responder(rules: Sequence[ToolRule], answer: str = "The result is {result}.") -> Handler:
    """A handler for tool loops, by rule.

    If tools are offered and no tool result is in the messages, call the tools of the first
    rule that matches (a named ``tool_choice`` picks the first rule calling that tool;
    ``"none"`` answers in text); once a tool result is in the messages, answer ``answer``
    with ``{result}`` the last result's content. No rule matches: None (the default answers).
    """

    def handle(request: RecordedRequest) -> Reply | None:
        results = request.tool_results
        if results:
            last = _content_text(results[-1].get("content"))
            return Reply(text=answer.format(result=last))
        offered = request.tool_names
        choice = request.body.get("tool_choice")
        if not offered or choice == "none":
            return None
        forced = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
        text = request.last_user_text.lower()
        for rule in rules:
            names = [c.name for c in rule.calls]
            if forced is not None and forced not in names:
                continue
            if forced is None and rule.when.lower() not in text:
                continue
            return Reply(tool_calls=list(rule.calls), finish_reason="tool_calls")
        return None

    return handle


def count_words(text: str) -> int:
    """The server's stand-in tokenizer: whitespace-separated words."""
    return len(text.split())


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


class OpenAIServer:
    """A threaded loopback server speaking the OpenAI chat-completions protocol."""

    def __init__(
        self,
        handler: Handler | None = None,
        default: ReplyLike = "OK",
        *,
        model: str = "loopback-model",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.handler = handler
        self.default = to_reply(default)
        self.model = model
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._script: deque[Reply] = deque()
        self._requests: list[RecordedRequest] = []
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> OpenAIServer:
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _Server((self._host, self._port), _make_handler(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"openai-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()  # wakes handlers sleeping in a delay
        httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        # Keep-alive connections outlive serve_forever; close them so a stopped server
        # really refuses work.
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- configuration and inspection ------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the server is not running")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (append ``/v1`` for an OpenAI ``base_url``)."""
        return f"http://{self._host}:{self.port}"

    def script(self, replies: Iterable[ReplyLike]) -> None:
        """Queue replies; each request takes the next one, in order."""
        items = [to_reply(item) for item in replies]
        with self._lock:
            self._script.extend(items)

    def reset(self) -> None:
        """Forget the script and the recorded requests."""
        with self._lock:
            self._script.clear()
            self._requests.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Chat-completion requests received so far (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def attempts(self) -> int:
        """How many chat-completion requests reached the server."""
        with self._lock:
            return len(self._requests)

    @property
    def pending(self) -> int:
        """Scripted replies not used yet."""
        with self._lock:
            return len(self._script)

    # -- internals -------------------------------------------------------------------------

    def _next_reply(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self._requests.append(request)
            scripted = self._script.popleft() if self._script else None
        if scripted is not None:
            return scripted
        if self.handler is not None:
            computed = self.handler(request)
            if computed is not None:
                return to_reply(computed)
        return self.default


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # A real server's listen backlog: socketserver's default of 5 drops the SYNs of a burst
    # of new connections (a batch of 100 at once), which the kernel resends after 1, 3, 7 ...
    # seconds: a client would see seconds of delay, even timeouts, that no server causes.
    request_queue_size = 1024


def _make_handler(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like real providers

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in separate writes; without NODELAY, Nagle plus the
            # client's delayed ACK adds ~40 ms to every keep-alive request.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with server._lock:
                server._connections.add(self.connection)

        def finish(self) -> None:
            with server._lock:
                server._connections.discard(self.connection)
            try:
                super().finish()
            except OSError:
                pass

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            pass  # tests read server.requests, not stderr

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                body = {
                    "object": "list",
                    "data": [
                        {
                            "id": server.model,
                            "object": "model",
                            "created": 0,
                            "owned_by": "loopback",
                        }
                    ],
                }
                self._send_json(200, body, {})
            else:
                self._send_json(404, _error_body(404, f"no route {self.path}", None), {})

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                self._send_json(404, _error_body(404, f"no route {self.path}", None), {})
                return
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError as exc:
                self._send_json(400, _error_body(400, f"invalid JSON: {exc}", None), {})
                return
            request = RecordedRequest(
                method="POST",
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body if isinstance(body, dict) else {"_": body},
                received_at=time.monotonic(),
            )
            reply = server._next_reply(request)
            if reply.delay_s > 0 and server._stopping.wait(reply.delay_s):
                self.close_connection = True
                return
            if reply.drop:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            try:
                if reply.status != 200:
                    payload = reply.body or _error_body(
                        reply.status, reply.error_message, reply.error_code
                    )
                    self._send_json(reply.status, payload, reply.headers)
                elif request.body.get("stream"):
                    self._send_stream(request, reply)
                else:
                    self._send_json(
                        200, reply.body or _completion(server, request, reply), reply.headers
                    )
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (its timeout)

        def _send_json(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _send_stream(self, request: RecordedRequest, reply: Reply) -> None:
            completion = _completion(server, request, reply)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.close_connection = True
            base = {
                "id": completion["id"],
                "object": "chat.completion.chunk",
                "created": completion["created"],
                "model": completion["model"],
            }
            words = reply.text.split(" ")
            pieces = [w if i == 0 else " " + w for i, w in enumerate(words)] if reply.text else []
            chunks: list[dict[str, Any]] = [
                {
                    **base,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                        }
                    ],
                }
            ]
            chunks += [
                {**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
                for p in pieces
            ]
            chunks += [
                {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                for delta in _tool_call_deltas(completion["choices"][0]["message"])
            ]
            chunks.append(
                {
                    **base,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": reply.finish_reason}],
                }
            )
            if (request.body.get("stream_options") or {}).get("include_usage"):
                chunks.append({**base, "choices": [], "usage": completion["usage"]})
            for i, chunk in enumerate(chunks):
                if i == reply.stall_after_chunks:
                    self.wfile.flush()
                    if server._stopping.wait(reply.stall_s):
                        return
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                request.sent_chunks = i + 1
                if reply.stall_after_chunks is not None:
                    self.wfile.flush()  # each chunk on the wire as it is sent
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return _Handler


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _completion(server: OpenAIServer, request: RecordedRequest, reply: Reply) -> dict[str, Any]:
    prompt_tokens = (
        reply.prompt_tokens
        if reply.prompt_tokens is not None
        else sum(count_words(_content_text(m.get("content"))) for m in request.messages)
    )
    calls = [c.wire() for c in reply.tool_calls or []]
    completion_tokens = (
        reply.completion_tokens
        if reply.completion_tokens is not None
        else count_words(reply.text) + sum(count_words(c["function"]["arguments"]) for c in calls)
    )
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if calls:
        message = {"role": "assistant", "content": reply.text or None, "tool_calls": calls}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(request.body.get("model") or server.model),
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _tool_call_deltas(message: dict[str, Any], piece: int = 8) -> list[dict[str, Any]]:
    """OpenAI's streamed form of ``message.tool_calls``: per call, a delta with its index, id
    and name, then its arguments text in pieces."""
    deltas: list[dict[str, Any]] = []
    for index, call in enumerate(message.get("tool_calls") or []):
        deltas.append(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""},
                    }
                ]
            }
        )
        args = call["function"]["arguments"]
        for start in range(0, len(args), piece):
            fragment = {"index": index, "function": {"arguments": args[start : start + piece]}}
            deltas.append({"tool_calls": [fragment]})
    return deltas


def _error_body(status: int, message: str | None, code: str | None) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {
        "error": {
            "message": message or f"scripted error {status}",
            "type": kind,
            "param": None,
            "code": code,
        }
    }


def free_port() -> int:
    """A loopback port with nothing listening on it (for connection-refused tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
