"""One settings object per process, read from ``FLOW_*`` environment variables.

Built at start-up (``Settings()``), never at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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

    jira_webhook_secret: SecretStr | None = None
    github_webhook_secret: SecretStr | None = None
    # Bearer token for POST /api/v1/events (canonical events over HTTP).
    ingest_token: SecretStr | None = None
    allow_unsigned: bool = False

    max_body_bytes: int = 1024 * 1024
    max_batch_events: int = 1000

    stages_file: Path | None = None
    dora_file: Path | None = None

    processor_batch_max: int = 5000
    processor_poll_ms: int = 200

    log_level: str = "INFO"
    log_json: bool = True

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
