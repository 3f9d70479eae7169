"""The routing configurations one process serves, by model id (``expertgraph/<name>``).

Used by ``expertgraph serve``, the LangChain adapter and the LiteLLM provider, so that the same
model id means the same orchestrator everywhere.

Model ids:

* ``expertgraph/<config name>`` for each configuration file. The name is the file's ``name:``
  when it sets one, else the file name without its suffix.
* ``expertgraph/<policy>`` for each registered policy (``policies.registry.POLICIES``) that is
  not already a configuration name and builds with its default options: the *first*
  configuration built again with that policy (same aggregator, budget and trace folder) over
  the same expert objects: an alias adds a policy, not another copy of each expert.
  A policy that needs options (``fixed`` needs ``experts``) has no alias.
* ``expertgraph`` alone names the first configuration. A response's model string
  (``expertgraph/<name>:<experts>``) resolves to ``<name>`` again.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from expertgraph.core.errors import ConfigError, ExpertGraphError, UnknownModelError
from expertgraph.orchestrator.config.schema import ExpertGraphConfig, PolicyConfig, load_config
from expertgraph.orchestrator.orchestrator import Orchestrator

PREFIX = "expertgraph"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CONFIG_SUFFIXES = (".yaml", ".yml", ".toml")


@dataclass(frozen=True)
class ServedModel:
    """One routing configuration under its model id."""

    id: str
    """``expertgraph/<name>``."""
    name: str
    orchestrator: Orchestrator
    policy: str
    source: str
    """The configuration file, or ``alias of <name>`` for a policy alias."""
    alias_of: str | None = None

    @property
    def experts(self) -> list[str]:
        return list(self.orchestrator.experts)


def model_id(name: str) -> str:
    return f"{PREFIX}/{name}"


def _check_name(name: str, where: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(
            f"{where}: model name {name!r} must be letters, digits, '.', '_' or '-' "
            "(it becomes the model id expertgraph/<name>)",
            path=where,
            field="name",
        )
    return name


def config_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand each path: a file stays, a directory gives its ``*.yaml|*.yml|*.toml`` sorted."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.suffix in _CONFIG_SUFFIXES and p.is_file()
            )
            if not found:
                raise ConfigError(
                    f"{path}: no *.yaml, *.yml or *.toml configuration in this directory",
                    path=str(path),
                )
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise ConfigError(
                f"cannot read config {path}: no such file or directory", path=str(path)
            )
    if not out:
        raise ConfigError("no configuration given")
    return out


def config_name(cfg: ExpertGraphConfig, path: Path | None) -> str:
    """The model name of a configuration: its ``name:`` when set, else the file stem."""
    if "name" in cfg.model_fields_set or path is None:
        return cfg.name
    return path.stem


class ModelCatalog:
    """Served routing configurations by model id; the first one is the default."""

    def __init__(self, models: Sequence[ServedModel]) -> None:
        if not models:
            raise ConfigError("a catalog needs at least one routing configuration")
        self._models: dict[str, ServedModel] = {}
        for served in models:
            if served.name in self._models:
                raise ConfigError(
                    f"two configurations are both named {served.name!r} "
                    f"({self._models[served.name].source} and {served.source}); "
                    "give one a different 'name:'",
                    field="name",
                )
            self._models[served.name] = served

    # ---- construction ----------------------------------------------------------------------

    @classmethod
    def from_paths(
        cls,
        paths: Iterable[str | Path],
        *,
        aliases: bool | Sequence[str] = True,
        base_dir: str | Path | None = None,
    ) -> ModelCatalog:
        """Load configuration files (or directories of them) and build their orchestrators.

        ``aliases``: True for every registered policy, a list for those, False for none.
        """
        loaded = [(load_config(path), path) for path in config_files(paths)]
        return cls.from_configs(loaded, aliases=aliases, base_dir=base_dir)

    @classmethod
    def from_configs(
        cls,
        configs: Sequence[tuple[ExpertGraphConfig, str | Path | None]],
        *,
        aliases: bool | Sequence[str] = True,
        base_dir: str | Path | None = None,
    ) -> ModelCatalog:
        """Build the orchestrators of parsed configurations, each with where it came from
        (a file, or None for one made in code), and the first one's policy aliases."""
        named: list[tuple[str, ExpertGraphConfig, str]] = []
        for cfg, source in configs:
            cfg = cfg.for_requests()
            path = Path(source) if source is not None else None
            where = str(source) if source is not None else "<in-process config>"
            named.append((_check_name(config_name(cfg, path), where), cfg, where))
        if not named:
            raise ConfigError("a catalog needs at least one routing configuration")
        models = [
            ServedModel(
                id=model_id(name),
                name=name,
                orchestrator=Orchestrator.from_config(cfg, base_dir=base_dir),
                policy=cfg.policy.name,
                source=where,
            )
            for name, cfg, where in named
        ]
        if aliases:
            first_name, first_cfg, _ = named[0]
            taken = {m.name for m in models}
            first = models[0].orchestrator
            models.extend(_policy_aliases(first_name, first_cfg, first, aliases, taken, base_dir))
        return cls(models)

    @classmethod
    def from_orchestrators(
        cls, orchestrators: Mapping[str, Orchestrator] | Sequence[Orchestrator] | Orchestrator
    ) -> ModelCatalog:
        """Serve live orchestrators: a mapping name -> orchestrator, or a list (by ``name``)."""
        if isinstance(orchestrators, Orchestrator):
            orchestrators = [orchestrators]
        items = (
            list(orchestrators.items())
            if isinstance(orchestrators, Mapping)
            else [(o.name, o) for o in orchestrators]
        )
        return cls(
            [
                ServedModel(
                    id=model_id(_check_name(name, "orchestrator")),
                    name=name,
                    orchestrator=orch,
                    policy=orch.policy.name,
                    source="in-process orchestrator",
                )
                for name, orch in items
            ]
        )

    # ---- lookup ------------------------------------------------------------------------------

    @property
    def default(self) -> ServedModel:
        return next(iter(self._models.values()))

    def ids(self) -> list[str]:
        return [m.id for m in self._models.values()]

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(list(self._models.values()))

    def __len__(self) -> int:
        return len(self._models)

    def resolve(self, model: str | None) -> ServedModel:
        """The served model for a request's ``model`` (see the module docstring for the forms)."""
        if model is None or model.strip() in ("", PREFIX):
            return self.default
        name = model.strip()
        if name.startswith(PREFIX + "/"):
            name = name[len(PREFIX) + 1 :]
        name = name.split(":", 1)[0]
        served = self._models.get(name)
        if served is None:
            raise UnknownModelError(model, self.ids())
        return served

    async def aclose(self) -> None:
        """Release every orchestrator's experts (an alias's are its configuration's)."""
        await asyncio.gather(
            *(m.orchestrator.aclose() for m in self._models.values()), return_exceptions=True
        )


def _policy_aliases(
    first_name: str,
    first_cfg: ExpertGraphConfig,
    first: Orchestrator,
    wanted: bool | Sequence[str],
    taken: set[str],
    base_dir: str | Path | None,
) -> list[ServedModel]:
    from expertgraph.policies.registry import POLICIES

    names = list(POLICIES) if wanted is True else list(wanted or [])
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ConfigError(
            f"policy aliases {unknown} are not registered policies; "
            f"known: {', '.join(sorted(POLICIES))}",
            field="aliases",
        )
    out: list[ServedModel] = []
    for policy in names:
        if policy in taken:
            continue
        cfg = first_cfg.model_copy(update={"policy": PolicyConfig(name=policy)})
        try:
            orch = Orchestrator.from_config(cfg, base_dir=base_dir, experts=first.experts)
        except ExpertGraphError:
            # The policy needs options (or trained files) the alias cannot guess: no alias.
            if wanted is not True:
                raise
            continue
        out.append(
            ServedModel(
                id=model_id(policy),
                name=policy,
                orchestrator=orch,
                policy=policy,
                source=f"alias of {first_name}",
                alias_of=first_name,
            )
        )
        taken.add(policy)
    return out
