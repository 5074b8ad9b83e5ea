"""The deployment files agree with each other (tests/unit/test_deploy.py checks each one is valid).

deploy/citeline.toml is read by every citeline process (compose mounts it, the k8s ConfigMap carries it,
systemd reads /etc/citeline/citeline.toml); the manifests must match what it says:

* vLLM's ``--max-lora-rank`` is ``adapters.max_rank`` (compose, both profiles, and k8s);
* every vLLM serves ``adapters.base_model_path`` (what preflight reads, and what vLLM's filesystem resolver
  compares ``base_model_name_or_path`` with) under the served name the api asks for, runs the resolver over
  ``adapters.store`` and mounts the adapter volume read-only there; api and scheduler mount it read-write at
  the same path, and the base's folder read-only;
* migrations run first, as the admin login (compose's ``migrate`` service, the k8s Job, the systemd unit), and
  the runtime services wait for them, never see the admin secret and run with ``auto_migrate`` false;
* the audit key reaches every runtime citeline process from a secret, never inline.

:func:`agreement_problems` lists every disagreement; the last test shows it fails on a broken copy.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from citeline.settings import Settings
from tests.conftest import REPO

pytestmark = pytest.mark.unit

DEPLOY = REPO / "deploy"
RUNTIME = ("api", "scheduler")  # compose services (and k8s Deployments citeline-api, citeline-scheduler)
VLLMS = ("vllm", "vllm-cpu")
MIGRATE = ["db", "migrate", "--runtime-login", "citeline_app"]
ADMIN_SECRET = "citeline-db-admin"


def load_files() -> dict[str, Any]:
    k8s = [d for p in sorted((DEPLOY / "k8s").glob("*.yaml")) if p.name != "kustomization.yaml"
           for d in yaml.safe_load_all(p.read_text()) if d]
    return {"settings": Settings.load(DEPLOY / "citeline.toml"),
            "compose": yaml.safe_load((DEPLOY / "compose.yaml").read_text()), "k8s": k8s,
            "units": {p.name: p.read_text() for p in (DEPLOY / "systemd").iterdir()}}


def flag(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


def short_mounts(volumes: list[str]) -> dict[str, str]:
    """compose's ``source:target[:mode]`` → {target: mode} ('rw' when none is given)."""
    out = {}
    for v in volumes:
        parts = re.sub(r"\$\{[^}]*\}", "VAR", v).split(":")  # ${CITELINE_MODELS_DIR:-./models}:/models:ro
        out[parts[1]] = parts[2] if len(parts) > 2 else "rw"
    return out


def under(path: str | Path, folder: str) -> bool:
    return PurePosixPath(str(path)).is_relative_to(PurePosixPath(folder))


def compose_problems(settings: Settings, compose: dict) -> list[str]:
    s, problems = compose["services"], []
    store, base, rank = str(settings.adapters.store), str(settings.adapters.base_model_path), settings.adapters.max_rank
    served = {s[r]["environment"]["CITELINE_GENERATION__OPTIONS__MODEL"] for r in RUNTIME}
    for name in VLLMS:
        svc, env = s[name], s[name]["environment"]
        cmd = svc["command"]
        if flag(cmd, "--max-lora-rank") != str(rank):
            problems.append(f"compose {name}: --max-lora-rank {flag(cmd, '--max-lora-rank')} != max_rank {rank}")
        if cmd[0] != base or {flag(cmd, "--served-model-name")} != served:
            problems.append(f"compose {name}: serves {cmd[0]} as {flag(cmd, '--served-model-name')}, citeline "
                            f"reads {base} and asks for {served}")
        if env.get("VLLM_PLUGINS") != "lora_filesystem_resolver" or env.get("VLLM_LORA_RESOLVER_CACHE_DIR") != store \
                or env.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING") != "True":
            problems.append(f"compose {name}: the LoRA resolver is not on over {store}")
        if short_mounts(svc["volumes"]).get(store) != "ro":
            problems.append(f"compose {name}: the adapter volume is not mounted read-only at {store}")
    for name in RUNTIME:
        svc, env = s[name], s[name]["environment"]
        mounts = short_mounts(svc["volumes"])
        if mounts.get(store) != "rw" or not any(under(base, t) and m == "ro" for t, m in mounts.items()):
            problems.append(f"compose {name}: mounts {sorted(mounts)}, not {store} read-write and {base} read-only")
        if svc["depends_on"].get("migrate", {}).get("condition") != "service_completed_successfully":
            problems.append(f"compose {name}: does not wait for migrate")
        if env.get("CITELINE_DATABASE__AUTO_MIGRATE") != "false":
            problems.append(f"compose {name}: auto_migrate is not false")
        if [f["path"] for f in svc["env_file"]] != ["./citeline.env"] or "CITELINE_AUDIT__KEY" in env:
            problems.append(f"compose {name}: the database URL and audit key must come from citeline.env only")
    if s["migrate"]["command"] != MIGRATE or [f["path"] for f in s["migrate"]["env_file"]] != ["./migrate.env"]:
        problems.append(f"compose migrate: not {MIGRATE} with migrate.env (the admin login)")
    return problems


def containers(k8s: list[dict], kind: str, name: str) -> tuple[dict, list[dict], list[dict]]:
    """(pod spec, init containers, containers) of the workload ``kind``/``name``."""
    [doc] = [d for d in k8s if d["kind"] == kind and d["metadata"]["name"] == name]
    pod = doc["spec"]["template"]["spec"] if kind != "CronJob" else doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return pod, pod.get("initContainers", []), pod["containers"]


def env_of(container: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def claim_mounts(pod: dict, container: dict) -> dict[str, tuple[str, bool]]:
    """{mountPath: (claim name, read-only)} of the container's PersistentVolumeClaim mounts."""
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    return {m["mountPath"]: (claims[m["name"]], bool(m.get("readOnly"))) for m in container["volumeMounts"]
            if m["name"] in claims}


def k8s_problems(settings: Settings, k8s: list[dict]) -> list[str]:
    problems = []
    store, base, rank = str(settings.adapters.store), str(settings.adapters.base_model_path), settings.adapters.max_rank
    vpod, _, [vllm] = containers(k8s, "Deployment", "vllm")
    vmounts, venv = claim_mounts(vpod, vllm), env_of(vllm)
    if flag(vllm["args"], "--max-lora-rank") != str(rank) or vllm["args"][0] != base:
        problems.append(f"k8s vllm: not `vllm serve {base} --max-lora-rank={rank}`")
    if venv.get("VLLM_PLUGINS") != "lora_filesystem_resolver" or venv.get("VLLM_LORA_RESOLVER_CACHE_DIR") != store \
            or vmounts.get(store, ("", False))[1] is not True:
        problems.append(f"k8s vllm: the LoRA resolver is not on over {store} (mounted read-only)")
    pvcs = {d["metadata"]["name"]: d for d in k8s if d["kind"] == "PersistentVolumeClaim"}
    for name in ("citeline-api", "citeline-scheduler", "citeline-sync-wiki"):
        kind = "CronJob" if name.endswith("wiki") else "Deployment"
        pod, inits, [main] = containers(k8s, kind, name)
        env = env_of(main)
        if env.get("CITELINE_DATABASE__AUTO_MIGRATE") != "false":
            problems.append(f"k8s {name}: auto_migrate is not false")
        if not isinstance(env.get("CITELINE_AUDIT__KEY"), dict) or ADMIN_SECRET in str(main):
            problems.append(f"k8s {name}: the audit key must come from a Secret; the admin login is the Job's")
        if kind == "CronJob":
            continue
        if env.get("CITELINE_GENERATION__OPTIONS__MODEL") != flag(vllm["args"], "--served-model-name"):
            problems.append(f"k8s {name}: asks for a model vLLM does not serve the base as")
        mounts = claim_mounts(pod, main)
        if mounts.get(store) != (vmounts[store][0], False):
            problems.append(f"k8s {name}: does not mount vLLM's adapter claim read-write at {store}")
        if not any(under(base, path) and ro and claim in {c for c, _ in vmounts.values()}
                   for path, (claim, ro) in mounts.items()):
            problems.append(f"k8s {name}: does not mount vLLM's base model read-only under {base}")
        if "ReadWriteMany" not in pvcs[vmounts[store][0]]["spec"]["accessModes"]:
            problems.append("k8s: the adapter claim is not ReadWriteMany")
        if not any("citeline db status" in " ".join(c["command"]) for c in inits):
            problems.append(f"k8s {name}: no init container waits for the migrate Job")
    _, _, [job] = containers(k8s, "Job", "citeline-migrate")
    if job["args"] != MIGRATE or job["envFrom"] != [{"secretRef": {"name": ADMIN_SECRET}}]:
        problems.append(f"k8s citeline-migrate: not {MIGRATE} with the {ADMIN_SECRET} Secret")
    return problems


def unit_problems(units: dict[str, str]) -> list[str]:
    problems = []
    for name in ("citeline-serve.service", "citeline-scheduler.service", "citeline-sync@.service"):
        text = units[name]
        if "Environment=CITELINE_DATABASE__AUTO_MIGRATE=false" not in text \
                or "EnvironmentFile=/etc/citeline/citeline.env" not in text or "CITELINE_AUDIT__KEY=" in text:
            problems.append(f"systemd {name}: auto_migrate false and secrets from citeline.env")
        if "@" not in name and "Requires=citeline-migrate.service" not in text:
            problems.append(f"systemd {name}: does not require citeline-migrate.service")
    migrate = units["citeline-migrate.service"]
    if f"citeline {' '.join(MIGRATE)}" not in migrate or "EnvironmentFile=/etc/citeline/migrate.env" not in migrate:
        problems.append("systemd citeline-migrate.service: not the migrate command with migrate.env")
    return problems


def agreement_problems(files: dict[str, Any]) -> list[str]:
    settings = files["settings"]
    problems = [] if settings.database.auto_migrate is False else ["citeline.toml: database.auto_migrate is not false"]
    if settings.adapters.store is None or settings.adapters.base_model_path is None:
        return [*problems, "citeline.toml: adapters.store and adapters.base_model_path must be set"]
    return [*problems, *compose_problems(settings, files["compose"]), *k8s_problems(settings, files["k8s"]),
            *unit_problems(files["units"])]


def test_the_deploy_files_agree():
    assert agreement_problems(load_files()) == []


def test_the_audit_key_and_runtime_login_are_in_the_env_file_examples():
    citeline_env = (DEPLOY / "citeline.env.example").read_text()
    assert "\nCITELINE_AUDIT__KEY=" in citeline_env and "postgresql://citeline_app:" in citeline_env
    migrate_env = (DEPLOY / "migrate.env.example").read_text()
    assert "\nCITELINE_RUNTIME_DB_PASSWORD=" in migrate_env and "CITELINE_AUDIT__KEY" not in migrate_env


def test_agreement_fails_on_broken_copies():
    files = load_files()
    broken = copy.deepcopy(files)
    cpu = broken["compose"]["services"]["vllm-cpu"]
    cpu["command"] = [c.replace("--max-lora-rank=", "--max-lora-rank=1") for c in cpu["command"]]
    cpu["environment"]["VLLM_LORA_RESOLVER_CACHE_DIR"] = "/elsewhere"
    del broken["compose"]["services"]["scheduler"]["depends_on"]["migrate"]
    api = next(d for d in broken["k8s"] if d["metadata"]["name"] == "citeline-api" and d["kind"] == "Deployment")
    pod = api["spec"]["template"]["spec"]
    pod["containers"][0]["volumeMounts"] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] != "adapters"]
    pod["containers"][0]["env"] = [e for e in pod["containers"][0]["env"] if e["name"] != "CITELINE_AUDIT__KEY"]
    broken["units"]["citeline-serve.service"] = broken["units"]["citeline-serve.service"].replace("Requires=", "Wants=")
    problems = "\n".join(agreement_problems(broken))
    for expected in ("vllm-cpu: --max-lora-rank", "vllm-cpu: the LoRA resolver", "scheduler: does not wait",
                     "citeline-api: does not mount vLLM's adapter claim", "citeline-api: the audit key",
                     "citeline-serve.service: does not require"):
        assert expected in problems, problems
    unset = copy.deepcopy(files)
    unset["settings"] = files["settings"].model_copy(update={"adapters": files["settings"].adapters.model_copy(
        update={"store": None})})
    assert "adapters.store and adapters.base_model_path must be set" in "\n".join(agreement_problems(unset))


HUB_DOWNLOADS = re.compile(r"snapshot_download|hf_hub_download|huggingface-cli\s+download|\bhf\s+download|"
                           r"from_pretrained\(\s*['\"][\w.-]+/[\w.-]+['\"]")


def hub_downloads(files: list[Path]) -> list[str]:
    """Lines outside comments that would fetch a model from a hub when a container or unit runs."""
    found = []
    for path in files:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.lstrip().startswith("#") and HUB_DOWNLOADS.search(line):
                found.append(f"{path.name}:{i}: {line.strip()}")
    return found


def test_nothing_in_the_deploy_files_downloads_from_a_model_hub(tmp_path: Path) -> None:
    files = [DEPLOY / "compose.yaml", DEPLOY / "Dockerfile", *sorted((DEPLOY / "k8s").glob("*.yaml")),
             *sorted((DEPLOY / "systemd").glob("*"))]
    assert hub_downloads(files) == []
    planted = tmp_path / "vllm.yaml"  # the check finds what it is for
    planted.write_text("# hf download in a comment is documentation\ncommand: [\"python3\", \"-c\", "
                       "\"import huggingface_hub; huggingface_hub.snapshot_download('org/model')\"]\n")
    assert hub_downloads([planted]) == [f"vllm.yaml:2: {planted.read_text().splitlines()[1].strip()}"]
