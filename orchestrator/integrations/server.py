"""``expertgraph serve``: routing configurations behind an OpenAI-compatible HTTP API.

Endpoints: ``POST /v1/chat/completions`` (JSON or server-sent events), ``GET /v1/models``,
``GET /v1/models/{model}``, ``GET /health`` and the OpenAPI schema at ``/openapi.json``.

* The request's ``model`` picks a routing configuration (see :mod:`.catalog`); the reply's
  ``model`` is ``expertgraph/<config>:<experts>``, naming the experts whose answer was
  returned, and ``usage`` sums every expert call of the run.
* Every request is one traced run; its id comes back in the ``X-Expertgraph-Trace-Id`` header.
  The requests of one conversation share a session id (the ``X-Expertgraph-Session`` header,
  else the request's ``user``, else ``metadata.session_id``), kept in the task's metadata as
  ``session`` so the traces link them.
* ``tools`` are offered to the experts with nothing behind them: a run whose vote chooses to
  call tools ends there and the reply carries ``message.tool_calls`` (``finish_reason:
  "tool_calls"``) for the client to execute; its next request carries the results.
* Bearer API keys come from ``EXPERTGRAPH_API_KEYS`` (comma or whitespace separated) and/or a
  key file (one key a line, ``#`` comments). Keys are required to listen on anything but
  loopback; on loopback they are optional. A missing or wrong key gets a 401 that says
  nothing else.
* Errors before the first byte are an HTTP status with an OpenAI error body; an error during
  a stream is a ``data: {"error": ...}`` event followed by ``data: [DONE]``.

FastAPI and uvicorn are imported by this module: import it only to serve.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Header, Request
from fastapi import Path as FastAPIPath
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from expertgraph.core.errors import (
    ConfigError,
    ExpertGraphError,
    NoAnswerError,
    NoExpertAvailable,
    UnknownModelError,
)
from expertgraph.core.types import RunResult, Task
from expertgraph.orchestrator.integrations._chat import (
    ChatReply,
    ToolRequestError,
    chat_reply,
    chat_task,
    stream_pieces,
)
from expertgraph.orchestrator.integrations.catalog import ModelCatalog, ServedModel
from expertgraph.orchestrator.integrations.openai_schema import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    ChunkDelta,
    CompletionUsage,
    ErrorBody,
    ErrorResponse,
    FunctionDelta,
    Health,
    ModelCard,
    ModelList,
    RunInfo,
    ToolCallDelta,
    ToolCallOut,
)
from expertgraph.traces.redact import register_secret
from expertgraph.traces.store import new_run_id

TRACE_HEADER = "X-Expertgraph-Trace-Id"
SESSION_HEADER = "X-Expertgraph-Session"
API_KEYS_ENV = "EXPERTGRAPH_API_KEYS"

log = logging.getLogger("expertgraph.serve")

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


@dataclass(frozen=True)
class ServeSettings:
    """Limits and keys of one server."""

    api_keys: frozenset[str] = frozenset()
    max_body_bytes: int = 1_000_000
    """Larger request bodies get 413 before they are parsed."""
    max_tokens_limit: int = 4096
    """A request's ``max_tokens`` / ``max_completion_tokens`` above this gets 400."""
    stream_words: int = 8
    """Words per streamed content chunk."""
    created: int = field(default_factory=lambda: int(time.time()))


# ---- keys and binding ------------------------------------------------------------------------


def load_api_keys(
    key_file: str | Path | None = None, env: Mapping[str, str] | None = None
) -> frozenset[str]:
    """Keys from ``EXPERTGRAPH_API_KEYS`` and a key file (one a line, ``#`` comments)."""
    env = os.environ if env is None else env
    keys = set(env.get(API_KEYS_ENV, "").replace(",", " ").split())
    if key_file is not None:
        path = Path(key_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read API key file {path}: {exc.strerror or exc}", path=str(path)
            ) from exc
        lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        file_keys = {line for line in lines if line}
        if not file_keys:
            raise ConfigError(f"API key file {path} holds no key", path=str(path))
        keys |= file_keys
    short = [k for k in keys if len(k) < 8]
    if short:
        raise ConfigError("API keys must be at least 8 characters long", field="api_keys")
    return frozenset(keys)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, settings: ServeSettings) -> None:
    """Refuse to listen beyond loopback without API keys."""
    if not settings.api_keys and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host!r} without API keys: set {API_KEYS_ENV} or pass "
            "--api-key-file (keys are optional only on 127.0.0.1 / ::1 / localhost)",
            field="host",
        )


# ---- errors ----------------------------------------------------------------------------------


class APIError(ExpertGraphError):
    """An error that becomes an OpenAI-style error response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorResponse(
            error=ErrorBody(message=message, type=type, param=param, code=code)
        )
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        return JSONResponse(self.body.model_dump(), status_code=self.status, headers=self.headers)


def _error(
    status: int, message: str, *, type: str, code: str | None = None, param: str | None = None
) -> JSONResponse:
    return APIError(status, message, type=type, code=code, param=param).response()


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _field_name(loc: tuple[Any, ...], body: Any = None) -> str | None:
    """``messages.0.content`` from pydantic's location, without its union-branch labels.

    pydantic puts union branches (``str``, ``list[TextPart]``) and discriminator tags
    (``json_schema``) in the location; walking the request body tells fields from labels: a
    label names nothing in the body, and nothing below a scalar is a field.
    """
    if loc[:1] == ("body",):
        loc = loc[1:]
    parts: list[str] = []
    node = body
    for i, item in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(item, int):
            if isinstance(node, list) and 0 <= item < len(node):
                node = node[item]
            parts.append(str(item))
            continue
        if not _IDENT.match(str(item)):
            continue
        if isinstance(node, dict):
            if item in node:
                node = node[item]
                parts.append(str(item))
            elif last:
                parts.append(str(item))  # a missing field
            continue
        if node is None and body is None:  # no body to walk: keep identifiers
            parts.append(str(item))
            continue
        break  # below a scalar: only union labels remain
    return ".".join(parts) or None


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        detail = ctx.get("error", first.get("msg", ""))
        return _error(
            400, f"invalid JSON body: {detail}", type="invalid_request_error", code="invalid_json"
        )
    problems: dict[str, str] = {}
    for err in errors:
        name = _field_name(tuple(err.get("loc", ())), exc.body) or "body"
        problems.setdefault(name, f"{name}: {err.get('msg', 'invalid')}")
    param = _field_name(tuple(first.get("loc", ())), exc.body)
    message = "; ".join(list(problems.values())[:5])
    return _error(400, message, type="invalid_request_error", param=param, code="invalid_value")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    response = _error(exc.status_code, str(exc.detail), type="invalid_request_error")
    response.headers.update(exc.headers or {})
    return response


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return exc.response()


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return _error(
        500, f"internal error: {type(exc).__name__}", type="server_error", code="internal_error"
    )


# ---- ASGI middleware: keys and body size, before anything is parsed --------------------------


class _Gate:
    """Checks the bearer key of ``/v1/`` requests and caps request bodies before routing."""

    def __init__(self, app: ASGIApp, *, settings: ServeSettings) -> None:
        self.app = app
        self.settings = settings
        self._keys = [k.encode() for k in settings.api_keys]
        for key in settings.api_keys:  # no trace, reply or log of this process shows them
            register_secret(key)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._keys and scope["path"].startswith("/v1/") and not self._authorized(scope):
            await _send_json(
                send,
                401,
                ErrorResponse(
                    error=ErrorBody(
                        message="invalid or missing API key",
                        # Not 'invalid_request_error': LiteLLM maps that string to a 400.
                        type="authentication_error",
                        code="invalid_api_key",
                    )
                ).model_dump(),
                {"www-authenticate": "Bearer"},
            )
            return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            body = await self._read_body(scope, receive)
            if body is None:
                limit = self.settings.max_body_bytes
                await _send_json(
                    send,
                    413,
                    ErrorResponse(
                        error=ErrorBody(
                            message=f"request body larger than {limit} bytes",
                            type="invalid_request_error",
                            code="request_too_large",
                        )
                    ).model_dump(),
                )
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _authorized(self, scope: MutableMapping[str, Any]) -> bool:
        header = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return False
        token = token.strip()
        # Compare against every key without stopping early: no timing hint of which matched.
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(token, key)
        return ok

    async def _read_body(self, scope: MutableMapping[str, Any], receive: Any) -> bytes | None:
        limit = self.settings.max_body_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > limit:
                        return None
                except ValueError:
                    pass
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Callable[[], Awaitable[dict[str, Any]]]:
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls wait for the disconnect, as Starlette expects

    return replayed


async def _send_json(
    send: Any, status: int, body: Any, headers: Mapping[str, str] | None = None
) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


# ---- chat completions ------------------------------------------------------------------------


def _session(body: ChatCompletionRequest, header: str | None) -> str | None:
    """The conversation's id: the session header, else ``user``, else ``metadata.session_id``."""
    if header:
        return header
    if body.user:
        return body.user
    value = (body.metadata or {}).get("session_id")
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 256:
        raise APIError(
            400,
            "metadata.session_id: must be a string of 1 to 256 characters",
            param="metadata.session_id",
            code="invalid_value",
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(
            400,
            "metadata.session_id: text is not valid Unicode",
            param="metadata.session_id",
            code="invalid_value",
        ) from None
    return value


def _task_for(
    body: ChatCompletionRequest, settings: ServeSettings, session: str | None = None
) -> Task:
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(body, name)
        if value is not None and value > settings.max_tokens_limit:
            raise APIError(
                400,
                f"{name}: {value} is above this server's limit of {settings.max_tokens_limit}",
                param=name,
                code="invalid_value",
            )
    session = _session(body, session)
    try:
        return chat_task(
            [m.to_core() for m in body.messages],
            body.model_dump(by_alias=True, exclude={"messages"}),
            metadata={
                "source": "serve",
                "model": body.model,
                **({"session": session} if session else {}),
            },
        )
    except ToolRequestError as exc:
        raise APIError(400, str(exc), param=exc.param, code="invalid_value") from None


def _run_info(served: ServedModel, reply: ChatReply) -> RunInfo:
    result = reply.result
    return RunInfo(
        run_id=result.run_id,
        experts=reply.experts,
        policy=served.policy,
        stop_reason=result.stop_reason,
        steps=len(result.steps),
        calls=reply.usage.calls,
        cost=reply.usage.cost,
    )


def _message(reply: ChatReply) -> AssistantMessage:
    if reply.tool_calls:
        return AssistantMessage(
            content=reply.text or None, tool_calls=[ToolCallOut.of(c) for c in reply.tool_calls]
        )
    return AssistantMessage(content=reply.text)


def _completion(served: ServedModel, reply: ChatReply, created: int) -> dict[str, Any]:
    data = ChatCompletion(
        id=f"chatcmpl-{reply.result.run_id}",
        created=created,
        model=reply.model,
        choices=[Choice(message=_message(reply), finish_reason=reply.finish_reason)],
        usage=CompletionUsage(**reply.openai_usage()),
        expertgraph=_run_info(served, reply),
    ).model_dump()
    for choice in data["choices"]:
        if choice["message"]["tool_calls"] is None:  # as OpenAI: no key when no call
            del choice["message"]["tool_calls"]
    return data


def _tool_call_deltas(reply: ChatReply) -> list[ChunkDelta]:
    """OpenAI's streamed calls: per call, one delta naming it, then one with its arguments."""
    deltas: list[ChunkDelta] = []
    for index, call in enumerate(reply.tool_calls):
        wire = call.openai()["function"]
        deltas.append(
            ChunkDelta(
                tool_calls=[
                    ToolCallDelta(
                        index=index,
                        id=call.id,
                        type="function",
                        function=FunctionDelta(name=call.name, arguments=""),
                    )
                ]
            )
        )
        deltas.append(
            ChunkDelta(
                tool_calls=[
                    ToolCallDelta(index=index, function=FunctionDelta(arguments=wire["arguments"]))
                ]
            )
        )
    return deltas


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


async def _stream(
    served: ServedModel,
    task: Task,
    body: ChatCompletionRequest,
    run_id: str,
    settings: ServeSettings,
) -> AsyncIterator[bytes]:
    created = int(time.time())
    cid = f"chatcmpl-{run_id}"

    def chunk(model: str, delta: ChunkDelta, finish: Any = None, **extra: Any) -> bytes:
        choices = (
            []
            if extra.get("usage") is not None
            else [ChunkChoice(delta=delta, finish_reason=finish)]
        )
        data = ChatCompletionChunk(
            id=cid, created=created, model=model, choices=choices, **extra
        ).model_dump()
        # As OpenAI sends them: finish_reason null until the end, no usage key until the usage
        # chunk, a delta with only the fields it carries.
        for key in ("usage", "expertgraph"):
            if data[key] is None:
                del data[key]
        for choice in data["choices"]:
            choice["delta"] = _without_nulls(choice["delta"])
        return _sse(data)

    # The role chunk goes out at once: the status line and headers are sent, so any failure
    # from here on is an error event, not an HTTP status.
    yield chunk(served.id, ChunkDelta(role="assistant", content=""))
    try:
        result: RunResult | None = None
        async for event in served.orchestrator.astream(task, run_id=run_id):
            if event.node == "end":
                result = event.result
        if result is None:  # astream always ends with an "end" event, unless it raises
            raise RuntimeError(f"run {run_id} ended without a result")
        reply = chat_reply(served.id, result)
        for piece in stream_pieces(reply.text, settings.stream_words):
            if piece:
                yield chunk(reply.model, ChunkDelta(content=piece))
        for delta in _tool_call_deltas(reply):
            yield chunk(reply.model, delta)
        yield chunk(reply.model, ChunkDelta(), reply.finish_reason)
        if body.stream_options is not None and body.stream_options.include_usage:
            usage = CompletionUsage(**reply.openai_usage())
            yield chunk(
                reply.model, ChunkDelta(), usage=usage, expertgraph=_run_info(served, reply)
            )
    except (NoAnswerError, NoExpertAvailable) as exc:
        code = "no_answer" if isinstance(exc, NoAnswerError) else "no_expert_available"
        yield _sse(
            ErrorResponse(
                error=ErrorBody(message=str(exc), type="expert_error", code=code)
            ).model_dump()
        )
    except Exception as exc:  # noqa: BLE001 - after the first byte an error can only be an event
        log.exception("run %s failed mid-stream", run_id)
        yield _sse(
            ErrorResponse(
                error=ErrorBody(
                    message=f"run {run_id} failed: {type(exc).__name__}",
                    type="server_error",
                    code="run_failed",
                )
            ).model_dump()
        )
    yield b"data: [DONE]\n\n"


# ---- the app ---------------------------------------------------------------------------------

_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._:+-]*$"

# One server-sent event (OpenAPI before 3.2: the schema of an event stream is one event's).
_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "description": (
                "A ChatCompletionChunk or an ErrorResponse as JSON; the last event is `[DONE]`."
            ),
            "contentMediaType": "application/json",
        },
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorResponse,
        "description": "Invalid JSON or field; `error.param` names the field.",
    },
    404: {"model": ErrorResponse, "description": "Unknown model."},
    413: {"model": ErrorResponse, "description": "Request body too large."},
    502: {"model": ErrorResponse, "description": "No expert produced an answer."},
}
_AUTH_ERROR: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong API key."}
}


def create_app(catalog: ModelCatalog, settings: ServeSettings | None = None) -> FastAPI:
    """The ASGI app serving ``catalog`` (run it with uvicorn, or :func:`serve`)."""
    settings = settings or ServeSettings()
    auth = _AUTH_ERROR if settings.api_keys else {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await catalog.aclose()

    app = FastAPI(
        title="expertgraph",
        summary="Routed experts behind the OpenAI chat-completions API.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.catalog = catalog
    app.state.settings = settings
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(Exception, _server_error)

    @app.get("/health", response_model=Health, tags=["meta"])
    async def health() -> Any:
        """Liveness: answers without a key and without naming any expert. While experts cool
        down after failures it says ``degraded`` (still 200): how many, and when the first
        recovers."""
        from expertgraph.core.health import HEALTH

        experts = [e for served in catalog for e in served.orchestrator.experts.values()]
        summary = HEALTH.summary(experts)
        if not summary["cooling"]:
            return Health()
        return JSONResponse({"status": "degraded", **summary})

    def _card(served: ServedModel) -> ModelCard:
        return ModelCard(id=served.id, created=settings.created)

    @app.get("/v1/models", response_model=ModelList, responses=auth, tags=["models"])
    async def list_models() -> ModelList:
        """The routing configurations served here, by model id."""
        return ModelList(data=[_card(m) for m in catalog])

    def _retrieve(model: str) -> ModelCard:
        try:
            return _card(catalog.resolve(model))
        except UnknownModelError as exc:
            raise APIError(404, str(exc), param="model", code="model_not_found") from None

    # Two routes because model ids hold a slash: /v1/models/expertgraph/<name> (what OpenAI
    # clients send for "expertgraph/<name>") and /v1/models/<name>.
    @app.get(
        "/v1/models/expertgraph/{name}",
        response_model=ModelCard,
        responses={**auth, 400: _ERRORS[400], 404: _ERRORS[404]},
        tags=["models"],
    )
    async def get_model(
        name: Annotated[str, FastAPIPath(max_length=256, pattern=_NAME_PATTERN)],
    ) -> ModelCard:
        """One routing configuration by model id ``expertgraph/<name>``."""
        return _retrieve(f"expertgraph/{name}")

    @app.get(
        "/v1/models/{model}",
        response_model=ModelCard,
        responses={**auth, 400: _ERRORS[400], 404: _ERRORS[404]},
        tags=["models"],
    )
    async def get_model_short(
        model: Annotated[str, FastAPIPath(max_length=256, pattern=_NAME_PATTERN)],
    ) -> ModelCard:
        """One routing configuration by its bare name (``expertgraph`` alone: the default)."""
        return _retrieve(model)

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses={
            200: {
                "description": "A completion, or with `stream: true` server-sent `data:` events "
                "(chat.completion.chunk objects, then `[DONE]`). The run's trace id is in "
                f"the `{TRACE_HEADER}` header.",
                "content": {"text/event-stream": {"schema": _SSE_EVENT}},
                "headers": {
                    TRACE_HEADER: {
                        "schema": {"type": "string"},
                        "description": "The run's trace id.",
                    }
                },
            },
            **auth,
            **_ERRORS,
        },
        tags=["chat"],
    )
    async def chat_completions(
        body: ChatCompletionRequest,
        x_expertgraph_session: Annotated[
            str | None,
            Header(
                max_length=256,
                description="Links the requests of one conversation in the traces.",
            ),
        ] = None,
    ) -> Response:
        """Run one routed task on the configuration that ``model`` names."""
        try:
            served = catalog.resolve(body.model)
        except UnknownModelError as exc:
            raise APIError(404, str(exc), param="model", code="model_not_found") from None
        task = _task_for(body, settings, x_expertgraph_session)
        run_id = new_run_id()
        headers = {TRACE_HEADER: run_id}
        if body.stream:
            return StreamingResponse(
                _stream(served, task, body, run_id, settings),
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        created = int(time.time())
        try:
            result = await served.orchestrator.arun(task, run_id=run_id)
        except NoExpertAvailable as exc:
            retry = {"Retry-After": str(max(1, math.ceil(exc.recovers_in_s)))}
            raise APIError(
                503,
                str(exc),
                type="expert_error",
                code="no_expert_available",
                headers={**headers, **retry},
            ) from None
        try:
            reply = chat_reply(served.id, result)
        except NoAnswerError as exc:
            raise APIError(
                502, str(exc), type="expert_error", code="no_answer", headers=headers
            ) from None
        return JSONResponse(_completion(served, reply, created), headers=headers)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _openapi(app, settings, catalog)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(_Gate, settings=settings)
    return app


def _openapi(app: FastAPI, settings: ServeSettings, catalog: ModelCatalog) -> dict[str, Any]:
    """FastAPI's schema, made to match what the server really does (and name its models)."""
    schema = get_openapi(
        title=app.title, version=app.version, summary=app.summary, routes=app.routes
    )
    served = [m.name for m in catalog]
    for path, path_item in schema.get("paths", {}).items():
        if path.startswith("/v1/models/"):
            for parameter in path_item["get"].get("parameters", []):
                parameter["schema"]["examples"] = served
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            # Validation errors are 400 with the OpenAI error body, never FastAPI's 422.
            operation.get("responses", {}).pop("422", None)
    components = schema.setdefault("components", {})
    schemas = components.get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    request = schemas.get("ChatCompletionRequest", {}).get("properties", {})
    if "model" in request:
        request["model"]["examples"] = catalog.ids()
    for name in ("max_tokens", "max_completion_tokens"):
        for option in request.get(name, {}).get("anyOf", []):
            if option.get("type") == "integer":
                option["maximum"] = settings.max_tokens_limit
    if settings.api_keys:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for path, path_item in schema.get("paths", {}).items():
            if path.startswith("/v1/"):
                for operation in path_item.values():
                    operation["security"] = [{"bearer": []}]
    return schema


# ---- running ---------------------------------------------------------------------------------


def serve(
    catalog: ModelCatalog,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    log_level: str = "info",
    access_log: bool = True,
) -> None:
    """Serve until interrupted. Refuses a non-loopback ``host`` without API keys."""
    import uvicorn

    settings = settings or ServeSettings()
    check_bind(host, settings)
    app = create_app(catalog, settings)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)


def serve_workers(
    factory: str,
    *,
    workers: int,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    access_log: bool = True,
) -> None:
    """Serve until interrupted as ``workers`` processes sharing one listening socket.

    ``factory`` is ``"module:function"``: each worker process (uvicorn's supervisor spawns
    them, and starts a new one if one dies) imports it and calls it for its own app, so
    every worker builds its own catalog. Workers of one config share its trace directory and
    index: run files have distinct ids and the index takes concurrent writers. The caller
    checks the bind (:func:`check_bind`) before the workers start.
    """
    import uvicorn

    uvicorn.run(
        factory,
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
    )


class ServerThread:
    """A server on a background thread (tests, notebooks, benchmarks)::

        with ServerThread(create_app(catalog)) as server:
            httpx.get(server.url + "/health")

    Port 0 picks a free port; :attr:`url` has the real one once started.
    """

    def __init__(
        self, app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
    ) -> None:
        import uvicorn

        self.host = host
        config = uvicorn.Config(
            app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, name="expertgraph-serve", daemon=True
        )
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.host}:{self.port} did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
