"""Stage configuration: the ordered flow, and which source status lands in which stage.

Pure: the only I/O is reading the TOML file in :func:`load_stage_config` (the file
format is described in ``docs/stages.md``; the packaged default is
``infra/stages.default.toml``).

- A :class:`Stage` is ``queue`` (waiting), ``active`` (being worked on) or
  ``done`` (finished; time spent there is neither queue nor active time).
- A :class:`TeamFlow` is the effective configuration of one team: the global
  stage list plus that team's status mapping, start stage and done stage.
  ``stage_for`` maps a status by name first (case-insensitive, trimmed), then
  by Jira status category, then to the first stage.
- Discarded statuses ("Won't Do", ...) map to :data:`REMOVED_STAGE`, which has
  index ``-1``: an item there is neither started (WIP) nor done.
- Cycle time starts at the first entry into ``start_stage`` or any later stage
  (``is_started``) and ends at the final entry into ``done_stage`` or any later
  stage (``is_done``).

Exceptions::

    ValueError
    ├── StageConfigError   the configuration is unusable (message says where)
    └── UnknownStageError  a stage name that is not in the configured list
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

REMOVED_STAGE = "Removed"

StageKind = Literal["queue", "active", "done"]
STAGE_KINDS: tuple[StageKind, ...] = ("queue", "active", "done")

DEFAULT_CONFIG_RESOURCE = "stages.default.toml"  # inside the ``infra`` package


def _empty_map() -> Mapping[str, Any]:
    return MappingProxyType({})


class StageConfigError(ValueError):
    """The stage configuration cannot be used; the message names the offending entry."""


class UnknownStageError(ValueError):
    """A stage name that is not in the configured stage list."""


def normalize_status(name: str) -> str:
    """The key a status (or category) is matched by: trimmed and case-folded."""
    return name.strip().casefold()


@dataclass(frozen=True)
class Stage:
    name: str
    kind: StageKind
    index: int


@dataclass(frozen=True)
class TeamFlow:
    """The effective stage configuration for one team."""

    stages: tuple[Stage, ...]
    start_stage: str
    done_stage: str
    # normalized status name -> stage name (or REMOVED_STAGE)
    status_map: Mapping[str, str] = field(default_factory=_empty_map, repr=False)
    # normalized status category key -> stage name
    category_map: Mapping[str, str] = field(default_factory=_empty_map, repr=False)
    _by_name: Mapping[str, Stage] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.stages:
            raise StageConfigError("the stage list is empty")
        by_name = {normalize_status(s.name): s for s in self.stages}
        object.__setattr__(self, "_by_name", MappingProxyType(by_name))
        # Memos: the fold asks the same few questions for every event.
        object.__setattr__(self, "_indexes", {})
        object.__setattr__(self, "_stages_for", {})
        for label, name in (("start_stage", self.start_stage), ("done_stage", self.done_stage)):
            if normalize_status(name) not in by_name:
                raise StageConfigError(f"{label} {name!r} is not a stage; {self._known()}")
        start, done = self.index(self.start_stage), self.index(self.done_stage)
        if start >= done:
            raise StageConfigError(
                f"start_stage {self.start_stage!r} must come before done_stage {self.done_stage!r}"
            )
        for stage in self.stages:
            if stage.kind == "done" and stage.index < done:
                raise StageConfigError(
                    f"stage {stage.name!r} has kind 'done' but comes before "
                    f"done_stage {self.done_stage!r}"
                )
        names = {s.name for s in self.stages} | {REMOVED_STAGE}
        for key, target in (*self.status_map.items(), *self.category_map.items()):
            if target not in names:
                raise StageConfigError(f"{key!r} maps to unknown stage {target!r}; {self._known()}")

    def _known(self) -> str:
        return "known stages: " + ", ".join(s.name for s in self.stages)

    def stage_for(self, status: str | None, category: str | None) -> str:
        """The stage of a status: by name, else by status category, else the first stage."""
        memo: dict[tuple[str | None, str | None], str] = self._stages_for  # type: ignore[attr-defined]
        found = memo.get((status, category))
        if found is None:
            found = memo[(status, category)] = self._stage_for(status, category)
        return found

    def _stage_for(self, status: str | None, category: str | None) -> str:
        if status is not None:
            stage = self.status_map.get(normalize_status(status))
            if stage is not None:
                return stage
        if category is not None:
            stage = self.category_map.get(normalize_status(category))
            if stage is not None:
                return stage
        return self.stages[0].name

    def index(self, stage: str) -> int:
        """Position in the flow; ``-1`` for :data:`REMOVED_STAGE`."""
        memo: dict[str, int] = self._indexes  # type: ignore[attr-defined]
        found = memo.get(stage)
        if found is None:
            found = memo[stage] = self._index(stage)
        return found

    def _index(self, stage: str) -> int:
        if stage == REMOVED_STAGE:
            return -1
        found = self._by_name.get(normalize_status(stage))
        if found is None:
            raise UnknownStageError(f"unknown stage {stage!r}; {self._known()}")
        return found.index

    def is_started(self, stage: str) -> bool:
        return self.index(stage) >= self.index(self.start_stage)

    def is_done(self, stage: str) -> bool:
        return self.index(stage) >= self.index(self.done_stage)


@dataclass(frozen=True)
class StageConfig:
    """The whole configuration: the global flow, per-team flows and project → team."""

    stages: tuple[Stage, ...]
    default: TeamFlow
    # case-folded team name -> that team's flow (only teams with overrides)
    team_flows: Mapping[str, TeamFlow] = field(default_factory=_empty_map)
    # case-folded project key -> team name
    project_teams: Mapping[str, str] = field(default_factory=_empty_map)

    def for_team(self, team: str | None) -> TeamFlow:
        """The team's flow; the global one for no team or a team without overrides."""
        if team is None:
            return self.default
        return self.team_flows.get(team.casefold(), self.default)

    def team_for_project(self, project: str) -> str:
        """The team a project belongs to; by default the project (key) itself."""
        return self.project_teams.get(project.casefold(), project)


def load_stage_config(path: Path | None = None) -> StageConfig:
    """Read a stage configuration file; ``None`` reads the packaged default."""
    if path is None:
        resource = resources.files("infra").joinpath(DEFAULT_CONFIG_RESOURCE)
        return parse_stage_config(resource.read_text(encoding="utf-8"), source=str(resource))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StageConfigError(f"cannot read stage config {path}: {exc.strerror or exc}") from exc
    return parse_stage_config(text, source=str(path))


def parse_stage_config(text: str, *, source: str = "<string>") -> StageConfig:
    """Build a :class:`StageConfig` from TOML text; errors are prefixed with ``source``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StageConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        return _build(data)
    except StageConfigError as exc:
        raise StageConfigError(f"{source}: {exc}") from None


_TOP_KEYS = {"start_stage", "done_stage", "discarded", "stages", "categories", "teams", "overrides"}
_STAGE_KEYS = {"name", "kind", "statuses"}
_OVERRIDE_KEYS = {"start_stage", "done_stage", "statuses", "categories"}


def _build(data: Mapping[str, Any]) -> StageConfig:
    _check_keys(data, _TOP_KEYS, "the top level")
    stages, status_map = _parse_stages(data.get("stages"))
    names = {normalize_status(s.name): s.name for s in stages}

    for status in _str_list(data.get("discarded", []), "discarded"):
        key = normalize_status(status)
        if key in status_map:
            raise StageConfigError(
                f"status {status!r} is both discarded and mapped to {status_map[key]!r}"
            )
        status_map[key] = REMOVED_STAGE

    category_map = _stage_table(data.get("categories", {}), "[categories]", names, removed=False)
    default = TeamFlow(
        stages=stages,
        start_stage=_stage_ref(data, "start_stage", "", names) or _default_start(stages),
        done_stage=_stage_ref(data, "done_stage", "", names) or _default_done(stages),
        status_map=MappingProxyType(status_map),
        category_map=MappingProxyType(category_map),
    )

    project_teams: dict[str, str] = {}
    for project, team in _table(data.get("teams", {}), "[teams]").items():
        if not isinstance(team, str) or not team.strip():
            raise StageConfigError(f"[teams] {project!r} must be a non-empty team name")
        project_teams[project.casefold()] = team.strip()

    team_flows: dict[str, TeamFlow] = {}
    for team, raw in _table(data.get("overrides", {}), "[overrides]").items():
        where = f"[overrides.{team!r}]"
        section = _table(raw, where)
        _check_keys(section, _OVERRIDE_KEYS, where)
        statuses = _stage_table(section.get("statuses", {}), where, names, removed=True)
        categories = _stage_table(section.get("categories", {}), where, names, removed=False)
        try:
            team_flows[team.casefold()] = TeamFlow(
                stages=stages,
                start_stage=_stage_ref(section, "start_stage", where, names) or default.start_stage,
                done_stage=_stage_ref(section, "done_stage", where, names) or default.done_stage,
                status_map=MappingProxyType({**default.status_map, **statuses}),
                category_map=MappingProxyType({**default.category_map, **categories}),
            )
        except StageConfigError as exc:
            raise StageConfigError(f"{where}: {exc}") from None

    return StageConfig(
        stages=stages,
        default=default,
        team_flows=MappingProxyType(team_flows),
        project_teams=MappingProxyType(project_teams),
    )


def _parse_stages(raw: object) -> tuple[tuple[Stage, ...], dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise StageConfigError("[[stages]] must list at least one stage")
    stages: list[Stage] = []
    status_map: dict[str, str] = {}
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        where = f"[[stages]] #{i + 1}"
        section = _table(entry, where)
        _check_keys(section, _STAGE_KEYS, where)
        name = section.get("name")
        if not isinstance(name, str) or not name.strip():
            raise StageConfigError(f"{where}: 'name' must be a non-empty string")
        name = name.strip()
        if normalize_status(name) == normalize_status(REMOVED_STAGE):
            raise StageConfigError(f"{where}: {REMOVED_STAGE!r} is reserved for discarded items")
        if normalize_status(name) in seen:
            raise StageConfigError(f"duplicate stage {name!r}")
        seen.add(normalize_status(name))
        kind = section.get("kind")
        if kind not in STAGE_KINDS:
            raise StageConfigError(
                f"stage {name!r}: kind must be one of {', '.join(STAGE_KINDS)}, not {kind!r}"
            )
        stages.append(Stage(name=name, kind=cast(StageKind, kind), index=i))
        for status in _str_list(section.get("statuses", []), f"stage {name!r} statuses"):
            key = normalize_status(status)
            if status_map.get(key, name) != name:
                raise StageConfigError(
                    f"status {status!r} is mapped to both {status_map[key]!r} and {name!r}"
                )
            status_map[key] = name
    return tuple(stages), status_map


def _default_start(stages: tuple[Stage, ...]) -> str:
    for stage in stages:
        if stage.kind == "active":
            return stage.name
    raise StageConfigError("no start_stage given and no stage of kind 'active' to default to")


def _default_done(stages: tuple[Stage, ...]) -> str:
    for stage in stages:
        if stage.kind == "done":
            return stage.name
    return stages[-1].name


def _stage_ref(section: Mapping[str, Any], key: str, where: str, names: Mapping[str, str]) -> str:
    """The canonical stage name under ``key``, or ``""`` when the key is absent."""
    value = section.get(key)
    if value is None:
        return ""
    if not isinstance(value, str) or normalize_status(value) not in names:
        prefix = f"{where} " if where else ""
        raise StageConfigError(
            f"{prefix}{key} {value!r} is not a stage; known stages: {', '.join(names.values())}"
        )
    return names[normalize_status(value)]


def _stage_table(
    raw: object, where: str, names: Mapping[str, str], *, removed: bool
) -> dict[str, str]:
    """A ``name = "Stage"`` table, keys normalized and targets made canonical."""
    out: dict[str, str] = {}
    for key, target in _table(raw, where).items():
        is_removed = (
            isinstance(target, str) and normalize_status(target) == REMOVED_STAGE.casefold()
        )
        if removed and is_removed:
            out[normalize_status(key)] = REMOVED_STAGE
            continue
        if not isinstance(target, str) or normalize_status(target) not in names:
            raise StageConfigError(
                f"{where} {key!r} maps to unknown stage {target!r}; "
                f"known stages: {', '.join(names.values())}"
            )
        out[normalize_status(key)] = names[normalize_status(target)]
    return out


def _table(raw: object, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise StageConfigError(f"{where} must be a table")
    return raw


def _str_list(raw: object, where: str) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(s, str) and s.strip() for s in raw):
        raise StageConfigError(f"{where} must be a list of non-empty strings")
    return cast(list[str], raw)


def _check_keys(section: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise StageConfigError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; "
            f"expected {', '.join(sorted(allowed))}"
        )
