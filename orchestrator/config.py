"""The one configuration file (YAML or TOML), validated by pydantic with file, line and field named."""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
    prompt_format: Literal["auto", "chat", "completion"] = "auto"


class APIExpertConfig(_ExpertBase):
    kind: Literal["api"]
    model: str = Field(min_length=1)
    """Any LiteLLM model string, e.g. ``openai/gpt-4o-mini``."""
    api_base: str | None = None
    api_key_env: str | None = None
    max_attempts: int = Field(4, ge=1)
    initial_wait_s: float = Field(0.5, ge=0)
    max_wait_s: float = Field(30.0, ge=0)


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


def _known_fields(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _suggestion(loc: tuple[Any, ...], data: Any) -> str:
    """'did you mean' for a misspelled key, found by walking the models along the path."""
    model: Any = ExpertGraphConfig
    node = data
    for item in loc[:-1]:
        if isinstance(node, dict):
            node = node.get(item)
        elif isinstance(node, list) and isinstance(item, int) and item < len(node):
            node = node[item]
        if isinstance(item, int):
            continue
        field = getattr(model, "model_fields", {}).get(item)
        if field is None:
            # A discriminator tag such as 'local' in experts.0.local.model
            for candidate in (LocalExpertConfig, APIExpertConfig, CallableExpertConfig):
                if candidate.model_fields["kind"].annotation == Literal[item]:  # type: ignore[comparison-overlap]
                    model = candidate
                    break
            continue
        annotation = field.annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if model is None:
            if item == "experts" and isinstance(node, dict):
                kind = node.get("kind")
                model = {
                    "local": LocalExpertConfig,
                    "api": APIExpertConfig,
                    "callable": CallableExpertConfig,
                }.get(kind)
            if model is None:
                return ""
    if model is None or not hasattr(model, "model_fields"):
        return ""
    close = difflib.get_close_matches(str(loc[-1]), _known_fields(model), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def config_error(exc: ValidationError, *, path: str, data: Any, lines: dict[tuple[Any, ...], int]) -> ConfigError:
    """Turn a pydantic error into one message naming the file, line and field of each problem."""
    problems: list[str] = []
    first_field: str | None = None
    for err in exc.errors():
        loc = tuple(err["loc"])
        # Drop union tags pydantic inserts (experts.0.local.model -> experts.0.model).
        clean = tuple(p for p in loc if p not in ("local", "api", "callable") or not isinstance(p, str))
        field = _field_name(clean)
        first_field = first_field or field
        line = None
        probe = clean
        while probe and line is None:
            line = lines.get(probe)
            probe = probe[:-1]
        where = f"{path}:{line}" if line else path
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = f"unknown field{_suggestion(clean, data)}"
        problems.append(f"{where}: {field or '<root>'}: {message}")
    text = "invalid configuration:\n  " + "\n  ".join(problems)
    return ConfigError(text, path=path, field=first_field)


def parse_config(data: Any, *, path: str = "<config>", text: str | None = None) -> ExpertGraphConfig:
    """Validate a config mapping; errors name the field (and the line when ``text`` is YAML)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the configuration must be a mapping, got {type(data).__name__}", path=path)
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
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}", path=str(path)) from exc
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
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}", path=str(path)) from exc
    return parse_config(data, path=str(path), text=text)
