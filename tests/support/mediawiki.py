"""A real MediaWiki on loopback for the MediaWiki connector's tests and benchmark.

Debian's ``mediawiki`` package (installed by ``deploy/system-deps.sh`` when missing) with SQLite and
PHP's built-in web server:

* :func:`start_mediawiki` makes a fresh wiki in a folder: ``maintenance/install.php --dbtype sqlite``
  (``MW_CONFIG_FILE`` points the installer and the server at that folder's ``LocalSettings.php``, so
  nothing under ``/etc`` or ``/var/lib/mediawiki`` is touched), appends :data:`TEST_SETTINGS` (a private
  ``Staff`` namespace, a ``read`` restriction type, no anonymous reading), creates two bot passwords and
  starts ``php -S 127.0.0.1:PORT`` in its own process group (``setsid``); :meth:`MediaWiki.stop` ends
  the group.
* :class:`WikiAdmin` writes to the wiki through its Action API as the administrator (edit, delete,
  move, protect, undelete), the way a person would; the connector under test only reads.
* :class:`MediaWikiProxy` is a :class:`~tests.support.replay.FakeApi` that forwards every request to
  the real wiki, so a :class:`~tests.support.replay.ReplayServer` in front of it can inject 429/5xx
  faults while everything else is the real wiki's answer.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.replay import FakeApi, Reply, Request

__all__ = ["MediaWiki", "MediaWikiProxy", "WikiAdmin", "ensure_mediawiki", "start_mediawiki"]

REPO = Path(__file__).resolve().parents[2]
MW_ROOT = Path("/usr/share/mediawiki")
STAFF_NS = 3000
ADMIN = "Admin"
ADMIN_PASSWORD = "citeline-admin-password-1"
BOT_USER = "Citeline"
BOT_APP = "citeline"
BOT_SECRET = "citelinebotsecret0123456789abcdef"  # bot passwords: 32+ of [0-9a-w]
ADMIN_BOT_SECRET = "adminbotsecret0123456789abcdefabcdef"

# A private namespace (what a Lockdown-style set-up restricts to a group; the connector maps it onto
# groups), a "read" restriction type pages can be protected with, and no reading without logging in.
TEST_SETTINGS = f"""
define( 'NS_STAFF', {STAFF_NS} );
define( 'NS_STAFF_TALK', {STAFF_NS + 1} );
$wgExtraNamespaces[NS_STAFF] = 'Staff';
$wgExtraNamespaces[NS_STAFF_TALK] = 'Staff_talk';
$wgNamespaceProtection[NS_STAFF] = [ 'editprotected' ];
$wgRestrictionTypes[] = 'read';
$wgRestrictionLevels[] = 'sysop';
$wgGroupPermissions['*']['read'] = false;
$wgGroupPermissions['*']['edit'] = false;
$wgGroupPermissions['*']['createaccount'] = false;
$wgEnableBotPasswords = true;
$wgRateLimits = [];
$wgJobRunRate = 0;
$wgShowExceptionDetails = true;
"""


def _installed() -> bool:
    return (MW_ROOT / "maintenance" / "install.php").is_file() and shutil.which("php") is not None


def ensure_mediawiki() -> None:
    """Install Debian's mediawiki and PHP's SQLite driver through deploy/system-deps.sh when missing."""
    if _installed():
        return
    result = subprocess.run(["bash", str(REPO / "deploy" / "system-deps.sh")], capture_output=True, text=True)
    if result.returncode != 0 or not _installed():
        raise RuntimeError(f"MediaWiki is not installed and deploy/system-deps.sh could not install it "
                           f"(exit {result.returncode}): {result.stderr[-2000:]}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class MediaWiki:
    """A running wiki: its root URL, its folder and the bot credentials the connector uses."""

    url: str
    root: Path
    process: subprocess.Popen[bytes]
    bot_user: str = f"{BOT_USER}@{BOT_APP}"
    bot_password: str = BOT_SECRET
    env: dict[str, str] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"{self.url}/api.php"

    def maintenance(self, script: str, *args: str, stdin: str | None = None) -> str:
        """Run ``maintenance/<script>.php`` against this wiki; returns its output (raises on failure)."""
        result = subprocess.run(["php", str(MW_ROOT / "maintenance" / f"{script}.php"), *args], input=stdin,
                                capture_output=True, text=True, env=self.env, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"{script}.php {' '.join(args)} failed: {result.stdout[-1000:]}{result.stderr[-2000:]}")
        return result.stdout

    def revoke_bot_password(self) -> None:
        """Invalidate the connector's bot password (an expired or revoked credential)."""
        self.maintenance("invalidateBotPasswords", "--user", BOT_USER)

    def restore_bot_password(self) -> None:
        """Give the connector's bot a working bot password again (a new one replaces the invalidated one)."""
        self.maintenance("sql", "--query", "DELETE FROM bot_passwords")
        _create_bot_passwords(self)

    def admin(self) -> WikiAdmin:
        return WikiAdmin(self.api_url)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def start_mediawiki(root: Path, *, workers: int = 4) -> MediaWiki:
    """A fresh SQLite wiki in ``root`` served by ``php -S`` on a free loopback port (see the module docstring)."""
    ensure_mediawiki()
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    data.mkdir(exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    settings = root / "LocalSettings.php"
    env = {**os.environ, "MW_CONFIG_FILE": str(settings), "PHP_CLI_SERVER_WORKERS": str(workers)}
    install = subprocess.run(
        ["php", str(MW_ROOT / "maintenance" / "install.php"), "--dbtype", "sqlite", "--dbpath", str(data),
         "--dbname", "wiki", "--server", url, "--scriptpath", "", "--confpath", str(root),
         "--pass", ADMIN_PASSWORD, "Citeline Test Wiki", ADMIN],
        capture_output=True, text=True, env=env, timeout=300)
    if install.returncode != 0 or not settings.is_file():
        raise RuntimeError(f"install.php failed ({install.returncode}): {install.stdout[-2000:]}{install.stderr[-2000:]}")
    with settings.open("a") as fh:
        fh.write(TEST_SETTINGS)
    log = (root / "php-server.log").open("ab")
    process = subprocess.Popen(["php", "-S", f"127.0.0.1:{port}", "-t", str(MW_ROOT)], cwd=MW_ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wiki = MediaWiki(url=url, root=root, process=process, env=env)
    try:
        wiki.maintenance("createAndPromote", "--bot", BOT_USER, "citeline-bot-password-1")
        _create_bot_passwords(wiki)
        _wait_ready(wiki)
    except BaseException:
        wiki.stop()
        raise
    return wiki


def _create_bot_passwords(wiki: MediaWiki) -> None:
    wiki.maintenance("createBotPassword", "--appid", BOT_APP, "--grants", "basic,highvolume", BOT_USER, BOT_SECRET)
    wiki.maintenance("createBotPassword", "--appid", "tests",
                     "--grants", "basic,highvolume,editpage,createeditmovepage,delete,protect,editprotected",
                     ADMIN, ADMIN_BOT_SECRET)


def _wait_ready(wiki: MediaWiki, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        if wiki.process.poll() is not None:
            break
        try:
            response = httpx.get(wiki.api_url, params={"action": "query", "meta": "siteinfo", "format": "json"},
                                 timeout=5)
            if response.status_code == 200 and ({"query", "error"} & response.json().keys()):  # up, reading or refusing
                return
            last = response.text[:300]
        except (httpx.HTTPError, ValueError) as exc:
            last = exc
        time.sleep(0.1)
    log = (wiki.root / "php-server.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"MediaWiki at {wiki.url} did not answer within {timeout_s:.0f} s ({last}); log: {log}")


class WikiAdmin:
    """The administrator, writing through the Action API (logged in with a bot password of Admin)."""

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url
        self.http = httpx.Client(timeout=60)
        token = self._get(action="query", meta="tokens", type="login")["query"]["tokens"]["logintoken"]
        result = self._post(action="login", lgname=f"{ADMIN}@tests", lgpassword=ADMIN_BOT_SECRET,
                            lgtoken=token)["login"]
        if result.get("result") != "Success":
            raise RuntimeError(f"admin login failed: {result}")
        self.csrf = self._get(action="query", meta="tokens")["query"]["tokens"]["csrftoken"]

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> WikiAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, **params: Any) -> dict[str, Any]:
        return self._check(self.http.get(self.api_url, params={**params, "format": "json", "formatversion": "2"}))

    def _post(self, **data: Any) -> dict[str, Any]:
        return self._check(self.http.post(self.api_url, data={**data, "format": "json", "formatversion": "2"}))

    @staticmethod
    def _check(response: httpx.Response) -> dict[str, Any]:
        response.raise_for_status()
        body = response.json()
        if "error" in body:
            raise RuntimeError(f"MediaWiki error: {body['error']}")
        return body

    def _write(self, **data: Any) -> dict[str, Any]:
        return self._post(**data, token=self.csrf)

    def edit(self, title: str, text: str, summary: str = "test edit") -> int:
        """Create or replace a page; returns its page id."""
        return self._write(action="edit", title=title, text=text, summary=summary, bot="1")["edit"]["pageid"]

    def delete(self, title: str, reason: str = "test deletion") -> None:
        self._write(action="delete", title=title, reason=reason)

    def undelete(self, title: str) -> None:
        self._write(action="undelete", title=title, reason="test restore")

    def move(self, title: str, to: str, *, redirect: bool = True) -> None:
        data: dict[str, Any] = {"action": "move", "from": title, "to": to, "reason": "test move"}
        if not redirect:
            data["noredirect"] = "1"
        self._write(**data)

    def protect(self, title: str, protections: str) -> None:
        """``protections`` like ``read=sysop|edit=sysop``; ``read=all`` lifts a read restriction."""
        self._write(action="protect", title=title, protections=protections, reason="test protection")

    def page_id(self, title: str) -> int | None:
        pages = self._get(action="query", titles=title)["query"]["pages"]
        return None if pages[0].get("missing") else pages[0]["pageid"]


class MediaWikiProxy(FakeApi):
    """Forwards every request to the real wiki (a ReplayServer in front adds faults and a request log)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")

    def authorized(self, request: Request) -> bool:
        return True  # the wiki itself decides

    def handle(self, request: Request) -> Reply:
        headers = {k: v for k, v in request.headers.items() if k in ("cookie", "content-type", "user-agent")}
        # httpx.request, not a Client: a client would keep the wiki's cookies and send them for every caller
        response = httpx.request(request.method, self.upstream + request.path, params=request.query,
                                 content=request.body or None, headers=headers, timeout=60)
        out: dict[str, Any] = {"Content-Type": response.headers.get("content-type", "application/json")}
        for name in ("MediaWiki-API-Error", "Retry-After"):
            if name in response.headers:
                out[name] = response.headers[name]
        cookies = response.headers.get_list("set-cookie")
        if cookies:
            out["Set-Cookie"] = cookies
        return Reply(response.status_code, response.content, out)

    def error(self, status: int, message: str) -> Reply:
        """An HTML error page as a front proxy (Varnish, a WAF) answers it; for ``status`` 200, MediaWiki's
        own error body with ``message`` as its code (``fail_next(..., 200, message="maxlag")``)."""
        if status == 200:
            return Reply(200, {"errors": [{"code": message, "text": f"injected {message}"}]},
                         {"MediaWiki-API-Error": message})
        return Reply(status, f"<html><body><h1>{status}</h1><p>{message}</p></body></html>",
                     {"Content-Type": "text/html; charset=utf-8"})
