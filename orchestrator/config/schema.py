"""The one configuration file (YAML or TOML), validated by pydantic with file, line and field
named.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from expertgraph.agents import RetrySettings
from expertgraph.core.errors import ConfigError
from expertgraph.core.types import Budget, ExpertCard

DEFAULT_HOME = ".expertgraph"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _ExpertBase(_Strict):
    name: str = Field(min_length=1)
    card: ExpertCard = Field(default_factory=ExpertCard)
    params: dict[str, Any] = Field(default_factory=dict)
    """Default generation params of this expert (max_tokens, temperature...)."""


class LocalExpertConfig(_ExpertBase):
    kind: Literal["local"]
    model: str = Field(min_length=1)
    """A bundled short name (``smollm2-135m``, ``gemma3-270m``), a model folder or a .gguf file."""
    gguf_file: str | None = None
    num_threads: int | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    prompt_format: Literal["auto", "chat", "completion"] = "auto"


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


class CallableExpertConfig(_ExpertBase):
    kind: Literal["callable"]
    callable: str = Field(pattern=r"^[\w.]+:[\w.]+$")
    """``package.module:function``."""


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
    """Post each finished run's spans as OTLP/JSON to this collector (``.../v1/traces``)."""
    otel_headers: dict[str, str] = Field(default_factory=dict)

    def store_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`expertgraph.traces.TraceStore` besides dir and fsync."""
        return {
            "capture_content": self.content,
            "redact": self.redact,
            "index": self.index,
            "otel_endpoint": self.otel_endpoint,
            "otel_headers": dict(self.otel_headers),
        }


class ExpertGraphConfig(_Strict):
    """The whole configuration of an orchestrator."""

    name: str = "default"
    home: str = DEFAULT_HOME
    """Runtime output (traces, caches, trained policies) goes under this folder."""
    experts: list[ExpertConfig] = Field(min_length=1)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    aggregator: AggregatorConfig = Field(default_factory=AggregatorConfig)
    top_k: int = Field(1, ge=1)
    budget: Budget = Field(default_factory=Budget)
    trace: TraceConfig = Field(default_factory=TraceConfig)
    defaults: dict[str, Any] = Field(default_factory=lambda: {"max_tokens": 128, "temperature": 0})
    """Generation params for every call, overridden by an expert's own ``params``."""

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
        line = None
        probe = loc
        while probe and line is None:
            line = lines.get(probe)
            probe = probe[:-1]
        where = f"{path}:{line}" if line else path
        problems.append(f"{where}: {field or '<root>'}: {message}")
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
        return ExpertGraphConfig.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, path=path, data=data, lines=lines) from None


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
