"""The environment and command a ``deploy/compose.yaml`` service would run with, for processes started on the host.

Compose's own rules, the parts the file uses: ``<<`` merge keys (YAML), ``environment`` as a mapping or a
``KEY=VALUE`` list, ``${VAR}``, ``${VAR:-default}`` and ``$$`` interpolation from the given variables (what
compose reads from the shell or ``.env``), and ``env_file``s whose contents the caller supplies by file name
(the secrets: the real files are not in the repository). Then what differs on one host without Docker:
``http://<service>:<port>`` becomes ``http://127.0.0.1:<host port>`` and container paths (volume mount points)
become host folders.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ComposeFile", "Service", "relocate", "relocate_text"]

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class Service:
    name: str
    environment: dict[str, str]  # env_file contents first, then `environment` (compose's precedence)
    command: list[str]
    entrypoint: list[str]
    profiles: list[str]
    depends_on: list[str]
    env_files: list[str]  # file names, e.g. citeline.env

    def arg(self, flag: str) -> str | None:
        """The value of ``--flag=value`` or ``--flag value`` in the command, if it is there."""
        for i, item in enumerate(self.command):
            if item.startswith(f"{flag}="):
                return item.split("=", 1)[1]
            if item == flag and i + 1 < len(self.command):
                return self.command[i + 1]
        return None


class ComposeFile:
    def __init__(self, path: Path, variables: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.variables = dict(variables or {})
        self.doc: dict[str, Any] = yaml.safe_load(path.read_text())

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        return self.doc["services"]

    def interpolate(self, value: str) -> str:
        def one(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name = m.group(1) or m.group(3)
            found = self.variables.get(name)
            if found is None or (found == "" and ":-" in m.group(0)):
                return m.group(2) or ""
            return found

        return _VAR.sub(one, value)

    def service(self, name: str, *, secrets: Mapping[str, Mapping[str, str]] | None = None) -> Service:
        """Service ``name``; ``secrets`` maps an env file's name (``citeline.env``) to what it would carry. A
        required env file with no entry there is an error (the test would run without what production has);
        without ``secrets`` the env files are left out (to read a command or a flag)."""
        if name not in self.services:
            raise KeyError(f"{self.path} has no service {name!r} (services: {sorted(self.services)})")
        spec = self.services[name]
        env: dict[str, str] = {}
        files: list[str] = []
        for entry in _as_list(spec.get("env_file")):
            path, required = (entry, True) if isinstance(entry, str) else (entry["path"], entry.get("required", True))
            file = Path(path).name
            files.append(file)
            if secrets is not None and file in secrets:
                env.update(secrets[file])
            elif required and secrets is not None:
                raise KeyError(f"service {name!r} needs the env file {file}: pass its variables in secrets")
        env.update({k: self.interpolate(str(v)) for k, v in _as_mapping(spec.get("environment")).items()})
        depends = spec.get("depends_on") or []
        return Service(name, env, [self.interpolate(str(c)) for c in _as_list(spec.get("command"))],
                       [self.interpolate(str(c)) for c in _as_list(spec.get("entrypoint"))],
                       list(spec.get("profiles") or []), list(depends), files)


def relocate(env: Mapping[str, str], *, hosts: Mapping[str, str], paths: Mapping[str, Path]) -> dict[str, str]:
    """``//service:port`` → ``//127.0.0.1:<hosts[service:port]>`` and container paths → host folders, in values."""
    out: dict[str, str] = {}
    for key, value in env.items():
        for service, address in hosts.items():
            value = value.replace(f"//{service}/", f"//{address}/").replace(f"@{service}/", f"@{address}/")
            if value.endswith(f"//{service}") or value.endswith(f"@{service}"):
                value = value[: -len(service)] + address
        for container, host in sorted(paths.items(), key=lambda kv: -len(kv[0])):
            if value == container or value.startswith(container.rstrip("/") + "/"):
                value = str(host) + value[len(container.rstrip("/")):]
        out[key] = value
    return out


def relocate_text(text: str, paths: Mapping[str, Path]) -> str:
    """Quoted container paths (``"/adapters"``, ``"/srv/sources/wiki"``) in a TOML text → host folders."""
    for container, host in sorted(paths.items(), key=lambda kv: -len(kv[0])):
        text = re.sub(rf'"{re.escape(container.rstrip("/"))}(?=[/"])', lambda _m, h=str(host): f'"{h}', text)
    return text


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, str | dict) else list(value)


def _as_mapping(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return {k: ("" if v is None else v) for k, v in value.items()}
    return dict(item.split("=", 1) if "=" in item else (item, "") for item in value)
