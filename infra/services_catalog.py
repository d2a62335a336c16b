"""The service catalog file (``FLOW_SERVICES_FILE``, TOML): services with their
owning team and the repositories and Jira projects that feed them.

```toml
[services.checkout]
team = "web"
repos = ["acme/checkout"]
jira_projects = ["CHK"]
description = "Cart and payment page"
```

At start-up the collectors publish it as ``service.declared`` events, so the
catalog and what other systems publish land in the same ``services`` table; and
the GitHub mapping names a repository's deployments and incidents after the
service that lists it. Unknown keys and bad values stop start-up with a message
naming the entry.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from schemas.events import ServiceDeclared, stable_event_id


class CatalogError(ValueError):
    """The catalog file cannot be used; the message names the entry."""


@dataclass(frozen=True)
class CatalogEntry:
    service: str
    team: str = ""
    repos: tuple[str, ...] = ()
    jira_projects: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class ServiceCatalog:
    entries: tuple[CatalogEntry, ...] = ()

    def service_for_repo(self) -> dict[str, str]:
        mapping: dict[str, str] = {}
        for entry in self.entries:
            for repo in entry.repos:
                if mapping.setdefault(repo, entry.service) != entry.service:
                    raise CatalogError(f"repo {repo!r} feeds both {mapping[repo]!r} "
                                       f"and {entry.service!r}")
        return mapping

    def events(self, now: datetime, source: str = "catalog") -> list[ServiceDeclared]:
        """One declaration per service. The id is the entry's content: re-publishing an
        unchanged catalog at each start folds nothing new; a changed entry wins by time."""
        return [
            ServiceDeclared(
                event_id=stable_event_id("service.declared", source, e.service, e.team,
                                         ",".join(e.repos), ",".join(e.jira_projects),
                                         e.description),
                source=source, occurred_at=now, received_at=now, key=f"service:{e.service}",
                service=e.service, team=e.team, repos=e.repos, jira_projects=e.jira_projects,
                description=e.description,
            )
            for e in self.entries
        ]


_KEYS = {"team": str, "description": str, "repos": list, "jira_projects": list}


def load_catalog(path: Path | None) -> ServiceCatalog:
    """The catalog in ``path``, or an empty one when there is none."""
    if path is None:
        return ServiceCatalog()
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"{path}: {exc}") from exc
    if unknown := sorted(set(data) - {"services"}):
        raise CatalogError(f"{path}: unknown keys {unknown}")
    services = data.get("services", {})
    if not isinstance(services, dict):
        raise CatalogError(f"{path}: [services] must be a table of services")
    entries = []
    for name, spec in sorted(services.items()):
        if not isinstance(spec, dict):
            raise CatalogError(f"services.{name}: must be a table")
        if unknown := sorted(set(spec) - set(_KEYS)):
            raise CatalogError(f"services.{name}: unknown keys {unknown}")
        for key, kind in _KEYS.items():
            value: Any = spec.get(key)
            if value is not None and not isinstance(value, kind):
                raise CatalogError(f"services.{name}.{key}: unexpected value {value!r}")
            items: list[Any] = list(value or ()) if kind is list else []
            if not all(isinstance(v, str) and v for v in items):
                raise CatalogError(f"services.{name}.{key}: a list of names")
        entries.append(CatalogEntry(
            service=name, team=spec.get("team", ""), repos=tuple(spec.get("repos", ())),
            jira_projects=tuple(spec.get("jira_projects", ())),
            description=spec.get("description", ""),
        ))
    catalog = ServiceCatalog(tuple(entries))
    catalog.service_for_repo()  # two services claiming one repository: refuse at start
    return catalog
