"""The deployment files in deploy/ are valid, and each check fails on a broken file.

* compose.yaml: the compose-spec JSON schema (shipped by check-jsonschema), plus `docker compose config`
  where a docker client with the compose plugin is installed;
* k8s/*.yaml: the Kubernetes OpenAPI schemas, strict (kubernetes-validate, offline);
* systemd/*: `systemd-analyze verify` where it is installed (any warning fails), and always a parse
  that checks the keys each unit needs;
* every CITELINE_* variable they set is a real setting (src/citeline/settings.py).

That the files agree with each other (max rank, base model, adapter store, mounts, migrate first, secrets)
is tests/unit/test_deploy_agreement.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel

from citeline import plugins
from citeline.ingest.scheduler import check_schedule
from citeline.settings import Settings
from tests.conftest import REPO

pytestmark = pytest.mark.unit

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
INSTALLED_CITELINE = "/opt/citeline/venv/bin/citeline"  # the systemd units' install prefix
# read by Settings.load / the CLI (`citeline db migrate --runtime-login` reads the runtime login's password)
ENV_NOT_SETTINGS = {"CITELINE_CONFIG", "CITELINE_LOG_LEVEL", "CITELINE_RUNTIME_DB_PASSWORD"}
# a plugin's own options table: its keys are the Config fields of the plugins of that group
PLUGIN_OPTIONS = {"embedding": plugins.EMBEDDERS, "chunking": plugins.CHUNKERS, "generation": plugins.GENERATORS}


# -- validators: each returns a list of problems ------------------------------------------------------
def compose_problems(doc: Any) -> list[str]:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


def k8s_problems(doc: dict) -> list[str]:
    try:
        kubernetes_validate.validate(doc, kubernetes_validate.utils.latest_version(), strict=True)
    except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
        return [f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {exc}"]
    return []


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's unit syntax: [Section], Key=Value (keys may repeat), # and ; comments, \\ continuations."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in re.sub(r"\\\n", " ", text).splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif "=" in line and current is not None:
            key, value = line.split("=", 1)
            current.setdefault(key.strip(), []).append(value.strip())
        else:
            raise ValueError(f"not a section, key=value or comment: {raw!r}")
    return sections


REQUIRED = {
    ".service": {"Unit": {"Description"}, "Service": {"ExecStart", "User"}},
    ".timer": {"Unit": {"Description"}, "Timer": {"OnCalendar", "Unit"}, "Install": {"WantedBy"}},
}


def unit_problems(name: str, text: str) -> list[str]:
    try:
        sections = parse_unit(text)
    except ValueError as exc:
        return [f"{name}: {exc}"]
    problems = []
    for section, keys in REQUIRED[Path(name).suffix].items():
        missing = keys - set(sections.get(section, {}))
        if missing:
            problems.append(f"{name}: [{section}] lacks {sorted(missing)}")
    if name.endswith(".service") and "@" not in name and "WantedBy" not in sections.get("Install", {}):
        problems.append(f"{name}: [Install] WantedBy= missing: it cannot be enabled")
    return problems


def systemd_analyze_problems(units: dict[str, str], tmp: Path) -> list[str]:
    """`systemd-analyze verify` on the units, templates instantiated as @wiki; any output is a problem."""
    citeline = Path(sys.executable).with_name("citeline")
    for name, text in units.items():
        (tmp / name.replace("@.", "@wiki.")).write_text(text.replace(INSTALLED_CITELINE, str(citeline)))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *sorted(p.name for p in tmp.iterdir())],
                            cwd=tmp, capture_output=True, text=True, timeout=120)
    out = (result.stdout + result.stderr).strip()
    return [line for line in out.splitlines() if line.strip()] or ([f"exit {result.returncode}"]
                                                                   if result.returncode else [])


def env_problems(names: set[str]) -> list[str]:
    """CITELINE_* names that are no setting (walks Settings' nested models by the `__` delimiter; a section's
    ``options`` by the Config fields of the installed plugins of its group)."""
    problems = []
    for name in sorted(n for n in names if n.startswith("CITELINE_") and n not in ENV_NOT_SETTINGS):
        parts = name.removeprefix("CITELINE_").lower().split("__")
        if len(parts) == 3 and parts[0] in PLUGIN_OPTIONS and parts[1] == "options":
            group = PLUGIN_OPTIONS[parts[0]]
            if not any(parts[2] in plugins.load(group, p).Config.model_fields for p in plugins.available(group)):
                problems.append(name)
            continue
        model: type[BaseModel] | None = Settings
        for part in parts:
            field = model.model_fields.get(part) if model else None
            if field is None:
                problems.append(name)
                break
            annotation = field.annotation
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return problems


# -- compose ------------------------------------------------------------------------------------------
def load_compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_matches_the_compose_spec():
    assert compose_problems(load_compose()) == []


def test_compose_validation_fails_on_a_broken_file():
    broken = load_compose()
    broken["services"]["api"]["restrat"] = "always"  # a typo
    broken["services"]["postgres"]["ports"] = {"5432": 5432}  # a mapping where a list belongs
    problems = compose_problems(broken)
    assert any("restrat" in p for p in problems) and any("ports" in p for p in problems), problems


def test_compose_services():
    services = load_compose()["services"]
    assert set(services) == {"postgres", "migrate", "embedder", "vllm", "vllm-cpu", "api", "scheduler"}
    assert services["postgres"]["image"] == "pgvector/pgvector:pg17"
    vllm, cpu = services["vllm"], services["vllm-cpu"]
    assert vllm["image"].startswith("vllm/vllm-openai:") and vllm["profiles"] == ["gpu"]
    assert "vllm-cpu" in cpu["image"] and cpu["profiles"] == ["cpu"]
    assert cpu["networks"]["default"]["aliases"] == ["vllm"]  # the api reaches either as http://vllm:8000
    for svc in (vllm, cpu):
        flags = " ".join(svc["command"])
        assert "--enable-lora" in flags and "--max-loras=" in flags and "--max-lora-rank=" in flags
    [device] = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["count"] == 1
    assert "deploy" not in cpu
    api, scheduler = services["api"], services["scheduler"]
    assert api["command"][0] == "serve" and "/readyz" in " ".join(api["healthcheck"]["test"])
    assert scheduler["command"][0] == "scheduler" and scheduler["stop_signal"] == "SIGTERM"
    assert "/healthz" in " ".join(scheduler["healthcheck"]["test"])  # the scheduler's --http-port listener
    for svc in (api, scheduler, services["migrate"]):
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile" and svc["build"]["args"]["CITELINE_EXTRAS"] == "server"
    for svc in (api, scheduler):
        assert svc["environment"]["CITELINE_GENERATION__BACKEND"] == "openai"
        assert svc["environment"]["CITELINE_GENERATION__OPTIONS__BASE_URL"] == "http://vllm:8000/v1"
        assert [f["path"] for f in svc["env_file"]] == ["./citeline.env"]  # secrets from an env file
        assert svc["depends_on"]["embedder"]["condition"] == "service_healthy"
        assert all(not svc["depends_on"][v].get("required", True) for v in ("vllm", "vllm-cpu"))  # by profile
    embedder = services["embedder"]
    assert embedder["command"][:1] == ["model-server"] and "local" in embedder["build"]["args"]["CITELINE_EXTRAS"]
    assert embedder["environment"]["CITELINE_GENERATION__BACKEND"] == "extractive"  # no generation model
    for env_file in ("citeline.env", "postgres.env", "migrate.env", "vllm.env"):
        assert (DEPLOY / f"{env_file}.example").is_file()


def _docker_compose() -> list[str] | None:
    """`docker compose` (the plugin), or a standalone Compose v2 `docker-compose`, if one is installed."""
    candidates = [[shutil.which("docker"), "compose"], [shutil.which("docker-compose")]]
    for command in (c for c in candidates if c[0]):
        probe = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0 and re.search(r"version v?2\.", probe.stdout):
            return command  # type: ignore[return-value]
    return None


@pytest.mark.skipif(_docker_compose() is None, reason="no Docker Compose v2 here (docker has no compose plugin); "
                    "compose.yaml is checked against the compose-spec schema instead")
def test_docker_compose_config_accepts_it(tmp_path):
    deploy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, deploy)
    for example in deploy.glob("*.env.example"):
        shutil.copy(example, deploy / example.name.removesuffix(".example"))
    result = subprocess.run([*(_docker_compose() or []), "-f", str(deploy / "compose.yaml"), "config", "-q"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_dockerfile():
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.splitlines()[[i for i, ln in enumerate(text.splitlines()) if ln.startswith("FROM")][0]] == \
        "FROM python:3.11-slim"
    # torch is pinned in deploy/constraints.txt (not in pyproject.toml); the image installs with it, torch from the
    # CPU index and only for the extras that bring it; the default image is the lean [server] one
    assert re.search(r"^torch==[0-9.]+$", (DEPLOY / "constraints.txt").read_text(), re.M)
    assert not re.search(r'"torch==', (REPO / "pyproject.toml").read_text())
    assert "ARG CITELINE_EXTRAS=server\n" in text and "whl/cpu" in text
    assert 'pip install -c deploy/constraints.txt ".[${CITELINE_EXTRAS}]"' in text
    assert "!deploy/constraints.txt" in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()


# -- Kubernetes ---------------------------------------------------------------------------------------
def k8s_docs() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d]
            for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"}


def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for docs in k8s_docs().values() for d in docs if d["kind"] == kind}


def test_kubernetes_manifests_match_the_openapi_schemas():
    problems = [p for docs in k8s_docs().values() for d in docs for p in k8s_problems(d)]
    assert problems == []


def test_kubernetes_validation_fails_on_a_broken_manifest():
    deployment = by_kind("Deployment")["citeline-api"]
    typo = json.loads(json.dumps(deployment))
    typo["spec"]["replica"] = typo["spec"].pop("replicas")
    wrong_type = json.loads(json.dumps(deployment))
    wrong_type["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSeconds"] = "often"
    no_port = json.loads(json.dumps(deployment))
    del no_port["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"]
    for broken in (typo, wrong_type, no_port):
        assert k8s_problems(broken), broken


def test_kustomization_lists_the_manifests():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == set(k8s_docs()) - {"cronjob-wiki.yaml"}  # the CronJob is the documented alternative
    assert all((K8S / name).is_file() for name in listed)


def test_api_has_probes_service_and_autoscaler():
    api = by_kind("Deployment")["citeline-api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["resources"]["requests"]["cpu"]  # the HPA's utilisation needs a request
    assert by_kind("Service")["citeline-api"]["spec"]["ports"][0]["targetPort"] == "http"
    hpa = by_kind("HorizontalPodAutoscaler")["citeline-api"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "citeline-api"}
    assert hpa["spec"]["minReplicas"] >= 2


def test_vllm_has_a_gpu_runtime_lora_and_the_adapter_volume():
    pod = by_kind("Deployment")["vllm"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    args = " ".join(container["args"])
    assert "--enable-lora" in args and "--max-loras=" in args and "--max-lora-rank=" in args
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in container["env"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["adapters"]["persistentVolumeClaim"]["claimName"] in by_kind("PersistentVolumeClaim")
    assert {"name": "adapters", "mountPath": "/adapters", "readOnly": True} in container["volumeMounts"]


def test_scheduler_cronjob_secrets_and_config():
    scheduler = by_kind("Deployment")["citeline-scheduler"]["spec"]["template"]["spec"]
    assert scheduler["containers"][0]["args"][0] == "scheduler"
    assert scheduler["terminationGracePeriodSeconds"] >= 60  # time to finish the current batch
    secrets = by_kind("Secret")
    assert "CITELINE_DATABASE_URL" in secrets["citeline-db"]["stringData"] and "citeline-connectors" in secrets
    toml = by_kind("ConfigMap")["citeline-config"]["data"]["citeline.toml"]
    assert toml == (DEPLOY / "citeline.toml").read_text()  # one config for compose, Kubernetes and systemd
    settings = Settings.load(DEPLOY / "citeline.toml")
    schedules = {s.name: check_schedule(s.name, s.schedule or "") for s in settings.sources}
    cronjob = by_kind("CronJob")["citeline-sync-wiki"]
    assert cronjob["spec"]["schedule"] == schedules["wiki"] and cronjob["spec"]["concurrencyPolicy"] == "Forbid"


# -- systemd ------------------------------------------------------------------------------------------
def units() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(SYSTEMD.iterdir())}


def test_systemd_units_are_all_there_and_complete():
    found = units()
    assert set(found) == {"citeline-serve.service", "citeline-scheduler.service", "citeline-sync@.service",
                          "citeline-sync@.timer", "citeline-migrate.service", "citeline-embedder.service"}
    assert [p for name, text in found.items() for p in unit_problems(name, text)] == []
    scheduler = parse_unit(found["citeline-scheduler.service"])["Service"]
    assert scheduler["ExecStart"][0].startswith(f"{INSTALLED_CITELINE} scheduler ")
    assert scheduler["KillSignal"] == ["SIGTERM"]
    assert parse_unit(found["citeline-sync@.timer"])["Timer"]["Unit"] == ["citeline-sync@%i.service"]


def test_unit_checks_fail_on_a_broken_unit():
    broken = units()["citeline-serve.service"].replace("ExecStart=", "ExecStrat=")
    assert unit_problems("citeline-serve.service", broken)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_verify_accepts_the_units(tmp_path):
    assert systemd_analyze_problems(units(), tmp_path) == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_verify_fails_on_a_broken_unit(tmp_path):
    broken = {"citeline-serve.service": units()["citeline-serve.service"].replace("Restart=", "Restrat=")}
    assert any("Restrat" in p for p in systemd_analyze_problems(broken, tmp_path))


# -- settings names -----------------------------------------------------------------------------------
def test_environment_variables_are_real_settings():
    names = set()
    for path in [DEPLOY / "compose.yaml", *K8S.glob("*.yaml"), *SYSTEMD.iterdir(), *DEPLOY.glob("*.example")]:
        names |= set(re.findall(r"\bCITELINE_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    assert {"CITELINE_DATABASE_URL", "CITELINE_GENERATION__BACKEND", "CITELINE_GENERATION__OPTIONS__BASE_URL",
            "CITELINE_GENERATION__OPTIONS__MODEL", "CITELINE_CONFIG"} <= names
    # compose's own ${...} variables, and the Dockerfile's build argument
    names -= {"CITELINE_BASE_MODEL", "CITELINE_PORT", "CITELINE_SOURCES_DIR", "CITELINE_MODELS_DIR", "CITELINE_EXTRAS"}
    assert env_problems(names) == []
    assert env_problems({"CITELINE_GENERATION__BASEURL", "CITELINE_DATABASE__URL"}) == ["CITELINE_GENERATION__BASEURL"]
    assert env_problems({"CITELINE_GENERATION__OPTIONS__BASEURL", "CITELINE_GENERATION__BASE_URL",
                         "CITELINE_EMBEDDING__OPTIONS__QUERY_ENCODER"}) == [
        "CITELINE_GENERATION__BASE_URL", "CITELINE_GENERATION__OPTIONS__BASEURL"]  # moved, misspelt
