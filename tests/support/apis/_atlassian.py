"""What the fake Confluence and the fake Jira share: Atlassian credentials, the clock, fixtures, page tokens.

* :class:`AtlassianFake` accepts Cloud's Basic ``email:API-token`` and Data Center's ``Bearer`` personal
  access token, keeps the site's clock (every change moves it ``step``) and the API user's time zone (query
  languages read dates in it), and loads the recorded shapes of its product from
  ``tests/fixtures/replay/<product>/``.
* Query languages: CQL and JQL filters are both ``AND``-ed clauses (:func:`clauses`); the fakes read
  ``field = K`` / ``field in (...)`` (:func:`keys_of`) and ``field >= "DATE"`` (:meth:`AtlassianFake.since`,
  the date in the API user's time zone, at minute precision).
* :func:`page_token` / :func:`read_page_token`: opaque continuation tokens (base64 of a little JSON), the
  kind Confluence's ``cursor`` and Jira Cloud's ``nextPageToken`` are to a client.
* :func:`retarget`: a deep copy of a recorded value with its id or key replaced in every string.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from tests.support.replay import FakeApi, Request

__all__ = ["AtlassianFake", "clauses", "keys_of", "page_token", "read_page_token", "retarget"]

REPLAY = Path(__file__).resolve().parents[2] / "fixtures" / "replay"


class AtlassianFake(FakeApi):
    """Credentials, clock and fixtures of a fake Atlassian product; subclasses set ``product``."""

    product = ""

    def __init__(self, *, email: str = "bot@acme.example", token: str = "good-token", pat: str = "good-pat",
                 time_zone: str = "UTC", start: datetime = datetime(2024, 5, 1, 8, 0, tzinfo=UTC),
                 step: timedelta = timedelta(hours=1)) -> None:
        self.basic = "Basic " + base64.b64encode(f"{email}:{token}".encode()).decode()
        self.bearer = f"Bearer {pat}"
        self.zone = ZoneInfo(time_zone)
        self.now, self.step = start, step

    def tick(self) -> datetime:
        """Move the clock one step (a change happens now)."""
        self.now += self.step
        return self.now

    def authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") in (self.basic, self.bearer)

    def fixture(self, name: str) -> Any:
        """A fresh copy of a recorded response of this product."""
        return json.loads((REPLAY / self.product / name).read_text(encoding="utf-8"))

    def since(self, field: str, clause: str, fmt: str) -> datetime | None:
        """``field >= "DATE"`` (DATE in ``fmt``, read in the API user's zone); ``None``: another clause."""
        match = re.fullmatch(rf'{field}\s*>=\s*"([^"]+)"', clause, re.IGNORECASE)
        return datetime.strptime(match.group(1), fmt).replace(tzinfo=self.zone) if match else None


def clauses(where: str) -> list[str]:
    """The ``AND``-ed clauses of a CQL or JQL filter, each without its enclosing parentheses."""
    out = []
    for clause in re.split(r"\s+AND\s+", where.strip(), flags=re.IGNORECASE):
        clause = clause.strip()
        while clause.startswith("(") and clause.endswith(")"):
            clause = clause[1:-1].strip()
        out.append(clause)
    return out


def keys_of(field: str, clause: str) -> set[str] | None:
    """``field = K`` or ``field in ("K", ...)``: the keys; ``None`` when the clause is about something else."""
    match = re.fullmatch(rf'{field}\s*(?:=\s*"?(\w+)"?|in\s*\(([^)]*)\))', clause, re.IGNORECASE)
    if match is None:
        return None
    return {match.group(1)} if match.group(1) else {k.strip().strip('"') for k in match.group(2).split(",")}


def page_token(**state: Any) -> str:
    """An opaque continuation token carrying ``state``."""
    return base64.urlsafe_b64encode(json.dumps(state, sort_keys=True).encode()).decode("ascii")


def read_page_token(token: str) -> dict[str, Any]:
    """The state of a :func:`page_token`; ``ValueError`` for anything this fake did not hand out."""
    try:
        state = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (binascii.Error, UnicodeError, ValueError):
        raise ValueError(f"not a page token of this server: {token!r}") from None
    if not isinstance(state, dict):
        raise ValueError(f"not a page token of this server: {token!r}")
    return state


def retarget(value: Any, old: str, new: str) -> Any:
    """A deep copy with the recorded id or key ``old`` replaced by ``new`` in every string (self links too)."""
    return json.loads(json.dumps(value).replace(old, new))
