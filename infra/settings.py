"""One settings object per process, read from ``FLOW_*`` environment variables.

Built at start-up (``Settings()``), never at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".flowmetrics"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLOW_", extra="ignore")

    env: Literal["development", "production"] = "production"
    home: Path = Field(default_factory=_default_home)

    # Empty means "start an embedded one" (``flowmetrics up``/``demo`` only).
    database_url: str = ""
    kafka_bootstrap: str = ""
    # Off only for brokers without InitProducerId (the embedded Tansu broker).
    kafka_idempotent_producer: bool = True
    topic_prefix: str = "flowmetrics"
    consumer_group: str = "flowmetrics-processor"
    # A dead processor's partitions move to the others after this long. Tansu
    # also holds a new group's first join for half of it.
    consumer_session_timeout_ms: int = 10_000

    collector_host: str = "127.0.0.1"
    collector_port: int = 8080
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # The API's own DSN, as the read-only role ``flowmetrics_api`` (migration
    # 0006); empty means it shares ``database_url``.
    api_database_url: str = ""
    # Bearer API keys on /api/v1; unset means on in production, off in development.
    api_auth: bool | None = None
    # Per key: a token bucket refilled at ``api_rate_limit`` requests/s, holding
    # at most ``api_rate_burst``.
    api_rate_limit: float = Field(default=10.0, gt=0)
    api_rate_burst: int = Field(default=40, ge=1)

    jira_webhook_secret: SecretStr | None = None
    github_webhook_secret: SecretStr | None = None
    # Bearer token for POST /api/v1/events (canonical events over HTTP).
    ingest_token: SecretStr | None = None
    allow_unsigned: bool = False

    max_body_bytes: int = 1024 * 1024
    max_batch_events: int = 1000

    stages_file: Path | None = None
    # GitHub → flowmetrics: the label that makes an issue an incident, and the
    # workflow-run names that are deployments (unset: none; see docs/dora.md).
    github_incident_label: str = "incident"
    github_deploy_workflow_pattern: str | None = None
    github_workflow_environment: str = "production"
    dora_file: Path | None = None

    # --- services and their dependency graph (docs/services.md) -----------------
    # The service catalog (TOML), published as service.declared events at start.
    services_file: Path | None = None
    # Incidents without an explicit link: "dependencies" looks at the incident's
    # service and what it depends on (up to ``attribution_depth`` hops);
    # "service" is the same-service rule alone.
    incident_attribution: Literal["dependencies", "service"] = "dependencies"
    attribution_depth: int = Field(default=2, ge=0, le=10)
    # An edge not seen for this long is stale (not deleted).
    service_edge_stale_days: float = Field(default=7.0, gt=0)
    # Prometheus with the OpenTelemetry service graph; unset: no scraping.
    prometheus_url: str = ""
    prometheus_query: str = ""  # empty: the default query (collectors/service_graph_scraper.py)
    prometheus_interval_s: float = Field(default=300.0, gt=0)
    prometheus_timeout_s: float = Field(default=10.0, gt=0)

    # /health, /ready and /metrics of a standalone processor (0: none). In
    # `flowmetrics up` the API's /metrics already carries the processor's counters.
    processor_metrics_port: int = 0
    processor_metrics_host: str = "127.0.0.1"
    # Events per transaction: larger batches fold an item once for several of its
    # events (docs/adr/0003: 5,000 -> 20,000 measured 7.3k -> 11.2k events/s).
    processor_batch_max: int = 20_000
    processor_poll_ms: int = 200
    # Work-item histories kept in memory between batches (events; 0: none). Bounds
    # the cache's memory, not its correctness: every use is checked against the store.
    processor_history_cache_events: int = 60_000
    # Projections refreshed in bulk, after the batches, instead of in each batch
    # (docs/adr/0003). A deferred refresh runs when the processor is idle, else at
    # most every `max(min_interval, cost_ratio x its last duration)` seconds, so it
    # takes at most ~1/(1+cost_ratio) of the processor's time at any history size.
    processor_deferred_projections: tuple[str, ...] = ("dora",)
    processor_deferred_min_interval_s: float = 2.0
    processor_deferred_cost_ratio: float = 3.0

    # --- collector spool (docs/operations-durability.md) -------------------------
    # Where accepted deliveries wait while Kafka is down; unset: <home>/spool/<prefix>.db.
    # One spool per collector process (it is locked while open).
    spool_path: Path | None = None
    # How long a delivery waits for Kafka's acknowledgement before it is spooled.
    spool_publish_timeout_s: float = Field(default=2.0, gt=0)
    # How often the drainer checks the broker: topics still there, group offsets.
    spool_probe_interval_s: float = Field(default=1.0, gt=0)
    # Keep each delivery until the processor's group committed past it, so a broker
    # that loses acknowledged records (a memory-only broker restarting) costs nothing.
    spool_keep_until_folded: bool = True

    # --- API backfill and reconcile (flowmetrics backfill | reconcile) ----------
    # Jira: the site URL; Cloud authenticates with e-mail + API token, Data
    # Center with a personal access token. "auto": Data Center when a PAT is
    # set, else Cloud.
    jira_base_url: str = ""
    jira_email: str = ""
    jira_api_token: SecretStr | None = None
    jira_pat: SecretStr | None = None
    jira_api: Literal["auto", "cloud", "datacenter"] = "auto"
    # GitHub: a token, or a GitHub App (id + PEM private key + installation id).
    github_api_url: str = "https://api.github.com"
    github_token: SecretStr | None = None
    github_app_id: str = ""
    github_app_installation_id: str = ""
    github_app_private_key: SecretStr | None = None
    # What `flowmetrics reconcile` walks: comma-separated Jira project keys and
    # GitHub owner/name repositories.
    reconcile_jira_projects: str = ""
    reconcile_github_repos: str = ""
    reconcile_first_days: int = Field(default=30, ge=1)  # a scope without a cursor
    backfill_page_size: int = Field(default=100, ge=1, le=100)
    backfill_concurrency: int = Field(default=8, ge=1, le=64)
    backfill_overlap_s: float = Field(default=300.0, ge=0)  # re-read before the watermark
    backfill_max_retries: int = Field(default=6, ge=0)  # 5xx/network, per request
    backfill_backoff_base_s: float = Field(default=1.0, gt=0)
    backfill_max_sleep_s: float = Field(default=3600.0, gt=0)  # cap on any single wait
    backfill_timeout_s: float = Field(default=30.0, gt=0)

    log_level: str = "INFO"
    log_json: bool = True

    @property
    def api_auth_required(self) -> bool:
        return self.api_auth if self.api_auth is not None else self.env == "production"

    def secret_values(self) -> list[str]:
        """Every configured secret, for the log redaction to scrub verbatim."""
        # Every SecretStr field, so a secret added later is redacted without a change here.
        values = [
            value.get_secret_value()
            for name in type(self).model_fields
            if isinstance(value := getattr(self, name), SecretStr)
        ]
        values += [_url_password(u) for u in (self.database_url, self.api_database_url)]
        return [v for v in values if v]

    @model_validator(mode="after")
    def _refuse_unsigned_in_production(self) -> Settings:
        if self.env == "production" and not self.allow_unsigned:
            missing = [
                name
                for name, value in (
                    ("FLOW_JIRA_WEBHOOK_SECRET", self.jira_webhook_secret),
                    ("FLOW_GITHUB_WEBHOOK_SECRET", self.github_webhook_secret),
                    ("FLOW_INGEST_TOKEN", self.ingest_token),
                )
                if value is None or not value.get_secret_value()
            ]
            if missing:
                raise ValueError(
                    "production requires "
                    + ", ".join(missing)
                    + " (or FLOW_ALLOW_UNSIGNED=1, or FLOW_ENV=development)"
                )
        return self


def _url_password(url: str) -> str:
    try:
        return urlsplit(url).password or ""
    except ValueError:
        return ""
