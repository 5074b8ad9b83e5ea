"""A real OpenLDAP server (Debian's ``slapd``) started in a temporary folder for one test module.

Generated ``slapd.conf`` (the mdb backend, the core/cosine/inetorgperson/nis schemas), data loaded with
``slapadd`` before it starts, listening on 127.0.0.1 at a free port; no system service is used. The directory:
``ou=people`` (inetOrgPerson: uid, departmentNumber) and ``ou=groups`` (groupOfNames: cn, member DNs).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["BASE", "ROOT_DN", "ROOT_PW", "Slapd", "slapd_server"]

BASE = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{BASE}"
ROOT_PW = "test-bind-password-7Qx"
_SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
_SCHEMAS = ("core", "cosine", "inetorgperson", "nis")


@dataclass
class Slapd:
    url: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ldif(users: dict[str, str | None], groups: dict[str, list[str]]) -> str:
    out = [f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n",
           f"dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n",
           f"dn: ou=groups,{BASE}\nobjectClass: organizationalUnit\nou: groups\n"]
    for uid, dept in users.items():
        entry = (f"dn: uid={uid},ou=people,{BASE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n")
        out.append(entry + (f"departmentNumber: {dept}\n" if dept else ""))
    for cn, members in groups.items():
        out.append(f"dn: cn={cn},ou=groups,{BASE}\nobjectClass: groupOfNames\ncn: {cn}\n"
                   + "".join(f"member: uid={m},ou=people,{BASE}\n" for m in members))
    return "\n".join(out)


def start_slapd(folder: Path, users: dict[str, str | None], groups: dict[str, list[str]]) -> Slapd:
    if not Path(_SLAPD).exists():
        why = "slapd is not installed (apt-get install -y slapd ldap-utils; tests/run.sh does it)"
        if os.environ.get("CI"):  # CI installs it (deploy/system-deps.sh): missing there is a failure, not a skip
            pytest.fail(why)
        pytest.skip(why)
    data = folder / "data"
    data.mkdir(parents=True)
    conf = folder / "slapd.conf"
    conf.write_text("".join(f"include /etc/ldap/schema/{s}.schema\n" for s in _SCHEMAS)
                    + f"pidfile {folder}/slapd.pid\nmodulepath /usr/lib/ldap\nmoduleload back_mdb\n"
                    f"database mdb\nmaxsize 10485760\nsuffix \"{BASE}\"\nrootdn \"{ROOT_DN}\"\nrootpw {ROOT_PW}\n"
                    f"directory {data}\n")
    (folder / "data.ldif").write_text(_ldif(users, groups))
    subprocess.run([_SLAPD.replace("slapd", "slapadd"), "-f", str(conf), "-l", str(folder / "data.ldif")],
                   check=True, capture_output=True, timeout=60)
    port = _free_port()
    url = f"ldap://127.0.0.1:{port}"
    log = (folder / "slapd.log").open("wb")
    proc = subprocess.Popen([_SLAPD, "-f", str(conf), "-h", f"{url}/", "-d", "0"], stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"slapd exited: {(folder / 'slapd.log').read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return Slapd(url, port, folder, proc)
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("slapd did not start listening in 30 s")


def slapd_server(tmp_path_factory: pytest.TempPathFactory, users: dict[str, str | None],
                 groups: dict[str, list[str]]) -> Iterator[Slapd]:
    server = start_slapd(tmp_path_factory.mktemp("slapd"), users, groups)
    try:
        yield server
    finally:
        server.stop()
