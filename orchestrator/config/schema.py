"""The one configuration file (YAML or TOML), validated by pydantic with file, line and field
named.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

from expertgraph.agents import RetrySettings
from expertgraph.core.errors import ConfigError
from expertgraph.core.health import CooldownSettings
from expertgraph.core.types import DEFAULT_MAX_REPLY_CHARS, Budget, ExpertCard
from expertgraph.traces.store import LIVE_INDEX_AFTER

DEFAULT_HOME = ".expertgraph"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _set_per_call(value: Any) -> Any:
    raise ValueError("is set by the orchestrator for each call (the sample's number), not here")


@with_config(ConfigDict(extra="allow"))
class CallParams(TypedDict, total=False):
    """Generation params of every call (``defaults``) or of one expert (``params``). The ones
    the call path reads are checked here, so a wrong one is a config error and not a failed
    call; any other is passed to the expert as it is."""

    max_tokens: Annotated[int, Field(ge=1)]
    temperature: Annotated[float, Field(ge=0)]
    top_p: Annotated[float, Field(gt=0, le=1)]
    timeout: Annotated[float, Field(gt=0)]
    """Seconds one call may take (else the card's ``timeout_s``)."""
    sample: Annotated[Any, AfterValidator(_set_per_call)]


_CALL_PARAMS: TypeAdapter[CallParams] = TypeAdapter(CallParams)


def check_call_params(params: Any, field: str) -> dict[str, Any]:
    """``params`` checked as :class:`CallParams` (Python API); the error names the field."""
    try:
        return dict(_CALL_PARAMS.validate_python(params))
    except ValidationError as exc:
        problems = [
            f"{'.'.join([field, *(str(p) for p in e['loc'])])}: {e['msg']}" for e in exc.errors()
        ]
        raise ConfigError("; ".join(problems), field=field) from None


class _ExpertBase(_Strict):
    name: str = Field(min_length=1)
    card: ExpertCard = Field(default_factory=ExpertCard)
    params: CallParams = Field(default_factory=lambda: CallParams())
    """Default generation params of this expert (max_tokens, temperature...)."""
    cooldown: CooldownSettings | None = None
    """This expert's cooldown, instead of the top-level ``cooldown``."""


class LocalExpertConfig(_ExpertBase):
    kind: Literal["local"]
    model: str = Field(min_length=1)
    """A bundled short name (``smollm2-135m``, ``gemma3-270m``), a model folder or a .gguf file."""
    gguf_file: str | None = None
    num_threads: int | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    prompt_format: Literal["auto", "chat", "completion"] = "auto"
    backend: Literal["auto", "transformers", "llama_cpp"] = "auto"
    """``auto``: llama.cpp for a GGUF file on the CPU when llama-cpp-python is installed."""
    max_batch_size: int = Field(8, ge=1)
    """Concurrent calls on the same weights generated as one batch, at most."""
    batch_window_ms: float = Field(5.0, ge=0)
    """How long a call waits for others to batch with."""


class APIExpertConfig(_ExpertBase):
    kind: Literal["api"]
    model: str = Field(min_length=1)
    """Any LiteLLM model string, e.g. ``openai/gpt-4o-mini``."""
    api_base: str | None = None
    api_key_env: str | None = None
    """Name of the environment variable that holds the key (the key itself never goes here)."""
    retry: RetrySettings = Field(default_factory=RetrySettings)
    attempt_timeout_s: float | None = Field(None, gt=0)
    pricing: Literal["auto", "card"] = "auto"
    stream: bool = False
    """Ask the API for streamed replies (rebuilt into one answer per call)."""
    first_token_timeout_s: float | None = Field(None, gt=0)
    """Streamed: fail the attempt (``first_token_timeout``) when no token came by then."""
    idle_timeout_s: float | None = Field(None, gt=0)
    """Streamed: fail the attempt (``idle_timeout``) when the stream stalls this long."""
    max_reply_chars: int = Field(DEFAULT_MAX_REPLY_CHARS, ge=1)
    """Longer replies are cut here and flagged (``truncated``); a stream stops being read."""

    @model_validator(mode="after")
    def _watchdogs_stream(self) -> APIExpertConfig:
        for field in ("first_token_timeout_s", "idle_timeout_s"):
            if getattr(self, field) is not None and not self.stream:
                raise ValueError(f"{field} needs stream: true")
        return self


class CallableExpertConfig(_ExpertBase):
    kind: Literal["callable"]
    callable: str = Field(pattern=r"^[\w.]+:[\w.]+$")
    """``package.module:function``."""
    max_reply_chars: int = Field(DEFAULT_MAX_REPLY_CHARS, ge=1)
    """Longer replies are cut here and flagged (``truncated``)."""


ExpertConfig = Annotated[
    LocalExpertConfig | APIExpertConfig | CallableExpertConfig, Field(discriminator="kind")
]


class PolicyConfig(BaseModel):
    """``name`` picks the policy; other keys are that policy's options, checked when it is built."""

    model_config = ConfigDict(extra="allow")

    name: str = "embedding"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class AggregatorConfig(PolicyConfig):
    name: str = "majority"


class TraceConfig(_Strict):
    dir: str | None = None
    """Where run traces go; default ``<home>/traces``."""
    fsync: bool = False
    content: bool = True
    """Capture prompts and outputs; off keeps routing, votes, usage and errors only."""
    redact: bool = True
    """Replace secrets (API keys, bearer tokens, known key shapes) by ``[REDACTED]`` on write."""
    index: bool = True
    """Keep ``<dir>/index.sqlite`` up to date as runs end (``expertgraph traces summary`` reads
    it)."""
    otel_endpoint: str | None = None
    """Send each finished run's spans (OpenTelemetry SDK, OTLP/HTTP) to this backend
    (``.../v1/traces`` is added when missing); needs the ``otel`` extra."""
    otel_headers: dict[str, str] = Field(default_factory=dict)
    """Headers of each export (an API key, say); their values are treated as secrets."""
    detail: Literal["full", "decisions"] = "full"
    """What each trace keeps: ``full`` (every record; a reply stored once) or ``decisions``
    (routes, votes and usage per step: a candidate keeps the answer it voted for, not its
    reply), the lean layout for long runs."""
    live_index_after: int | None = Field(default=LIVE_INDEX_AFTER, ge=1)
    """A run past this many trace records is indexed as it is written, by a process of its
    own, so the index is complete when the run ends; null: index every run when it ends."""

    def store_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`expertgraph.traces.TraceStore` besides dir and fsync."""
        return {
            "capture_content": self.content,
            "redact": self.redact,
            "index": self.index,
            "otel_endpoint": self.otel_endpoint,
            "otel_headers": dict(self.otel_headers),
            "detail": self.detail,
            "live_index_after": self.live_index_after,
        }


class CheckpointConfig(_Strict):
    """Where runs save their LangGraph checkpoints, so ``expertgraph run --resume RUN_ID``
    continues a killed run without calling an expert again for work already answered."""

    backend: Literal["sqlite", "postgres", "none"] = "sqlite"
    """``none``: runs are not saved (nothing to resume), the cheapest."""
    path: str | None = None
    """The SQLite file; default ``<home>/checkpoints.sqlite``."""
    dsn: str | None = None
    """PostgreSQL connection string (``postgresql://user@host:5432/db``), for several
    processes or machines to share; keep the password in ``PGPASSWORD`` or ``~/.pgpass``."""
    durability: Literal["sync", "async", "exit"] = "sync"
    """LangGraph's durability mode: ``sync`` saves every superstep before the next starts."""

    @model_validator(mode="after")
    def _fits_backend(self) -> CheckpointConfig:
        if self.backend == "postgres" and not self.dsn:
            raise ValueError("backend 'postgres' needs a dsn")
        if self.dsn and self.backend != "postgres":
            raise ValueError(f"dsn is for backend 'postgres', not {self.backend!r}")
        if self.path and self.backend != "sqlite":
            raise ValueError(f"path is for backend 'sqlite', not {self.backend!r}")
        return self

    def location(self, home: Path, base: Path | None = None) -> str | None:
        """The SQLite file (``path`` relative to ``base``) or the DSN; None for ``none``."""
        if self.backend == "none":
            return None
        if self.backend == "postgres":
            return self.dsn
        if not self.path:
            return str(home / "checkpoints.sqlite")
        path = Path(self.path).expanduser()
        return str(path if path.is_absolute() or base is None else base / path)


class ExpertGraphConfig(_Strict):
    """The whole configuration of an orchestrator."""

    name: str = "default"
    home: str = DEFAULT_HOME
    """Runtime output (traces, caches, trained policies) goes under this folder."""
    experts: list[ExpertConfig] = Field(min_length=1)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    aggregator: AggregatorConfig = Field(default_factory=AggregatorConfig)
    top_k: int = Field(1, ge=1)
    history_window: int | None = Field(None, ge=1)
    """Steps of the run the graph's state keeps for the next decision (default: at least 16,
    more if the policy or aggregator declares it); the full history is in the trace."""
    budget: Budget = Field(default_factory=Budget)
    cooldown: CooldownSettings = Field(default_factory=CooldownSettings)
    """When a failing expert is skipped by every run of the process, and for how long."""
    trace: TraceConfig = Field(default_factory=TraceConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    defaults: CallParams = Field(default_factory=lambda: CallParams(max_tokens=128, temperature=0))
    """Generation params for every call, overridden by an expert's own ``params``."""

    _source: str = PrivateAttr("<config>")
    _lines: dict[tuple[Any, ...], int] = PrivateAttr(default_factory=dict)

    def error(self, loc: tuple[Any, ...], message: str) -> ConfigError:
        """An error found after validation (when building), naming file, line and field."""
        field = _field_name(loc)
        where = _where(self._source, self._lines, loc)
        return ConfigError(f"{where}: {field}: {message}", path=self._source, field=field)

    def for_requests(self) -> ExpertGraphConfig:
        """This configuration as served (``serve``, the LangChain and LiteLLM adapters): a
        served request cannot be resumed by its client, so runs are not checkpointed unless
        the file names a ``checkpoint:`` section itself."""
        if "checkpoint" in self.model_fields_set:
            return self
        return self.model_copy(update={"checkpoint": CheckpointConfig(backend="none")})

    def trace_dir(self, base: Path | None = None) -> Path:
        path = Path(self.trace.dir) if self.trace.dir else Path(self.home) / "traces"
        return path if path.is_absolute() or base is None else base / path


# ---- loading -----------------------------------------------------------------------------


def _yaml_lines(text: str) -> dict[tuple[Any, ...], int]:
    """Map each key path of a YAML document to its 1-based line."""
    lines: dict[tuple[Any, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[Any, ...]) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*path, key.value)
                lines[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def _field_name(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _pick(models: list[type[BaseModel]], node: Any) -> type[BaseModel] | None:
    """The model that validates ``node``; a tagged union is resolved by its ``kind``."""
    if len(models) == 1:
        return models[0]
    if isinstance(node, dict):
        for model in models:
            kind = model.model_fields.get("kind")
            if kind is not None and get_args(kind.annotation) == (node.get("kind"),):
                return model
    return None


def _suggestion(loc: tuple[Any, ...], data: Any) -> str:
    """'did you mean' for a misspelled key, found by walking the models along the path."""
    models: list[type[BaseModel]] = [ExpertGraphConfig]
    node = data
    for item in loc[:-1]:
        if isinstance(item, int):
            node = node[item] if isinstance(node, list) and item < len(node) else None
            continue
        model = _pick(models, node)
        field = model.model_fields.get(item) if model else None
        if field is None:
            return ""
        models = _models_in(field.annotation)
        node = node.get(item) if isinstance(node, dict) else None
    model = _pick(models, node)
    if model is None:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


_EXPERT_KINDS = ("local", "api", "callable")


def _strip_union_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """pydantic puts the union tag in the path (experts.0.local.model); drop it."""
    out: list[Any] = []
    for i, part in enumerate(loc):
        if (
            i >= 2
            and loc[i - 2] == "experts"
            and isinstance(loc[i - 1], int)
            and part in _EXPERT_KINDS
        ):
            continue
        out.append(part)
    return tuple(out)


def _where(path: str, lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> str:
    """``file:line`` of the value at ``loc`` (else of the nearest enclosing key), or the file."""
    line = None
    probe = loc
    while probe and line is None:
        line = lines.get(probe)
        probe = probe[:-1]
    return f"{path}:{line}" if line else path


def config_error(
    exc: ValidationError, *, path: str, data: Any, lines: dict[tuple[Any, ...], int]
) -> ConfigError:
    """Turn a pydantic error into one message naming the file, line and field of each problem."""
    problems: list[str] = []
    first_field: str | None = None
    for err in exc.errors():
        loc = _strip_union_tags(tuple(err["loc"]))
        message = err["msg"]
        ctx = err.get("ctx", {})
        if err["type"] in ("union_tag_not_found", "union_tag_invalid"):
            loc = (*loc, str(ctx.get("discriminator", "kind")).strip("'"))
            given = ctx.get("tag")
            message = (f"{given!r} is not" if given else "missing; it must be") + (
                " one of: "
                + str(ctx.get("expected_tags", ", ".join(repr(k) for k in _EXPERT_KINDS)))
            )
        elif err["type"] == "extra_forbidden":
            message = f"unknown field{_suggestion(loc, data)}"
        field = _field_name(loc)
        first_field = first_field or field
        problems.append(f"{_where(path, lines, loc)}: {field or '<root>'}: {message}")
    text = "invalid configuration:\n  " + "\n  ".join(problems)
    return ConfigError(text, path=path, field=first_field)


def parse_config(
    data: Any, *, path: str = "<config>", text: str | None = None
) -> ExpertGraphConfig:
    """Validate a config mapping; errors name the field (and the line when ``text`` is YAML)."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the configuration must be a mapping, got {type(data).__name__}", path=path
        )
    lines = _yaml_lines(text) if text is not None else {}
    try:
        cfg = ExpertGraphConfig.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, path=path, data=data, lines=lines) from None
    cfg._source, cfg._lines = path, lines
    return cfg


def load_config(path: str | Path) -> ExpertGraphConfig:
    """Read and validate a YAML or TOML configuration file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read config {path}: {exc.strerror or exc}", path=str(path)
        ) from exc
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}", path=str(path)) from exc
        return parse_config(data, path=str(path))
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(
            f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}", path=str(path)
        ) from exc
    return parse_config(data, path=str(path), text=text)
