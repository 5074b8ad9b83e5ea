"""The deletion deadline for the file connectors (folder, tickets, catalog), measured on the real index."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from citeline.connectors.catalog import CatalogConnector
from citeline.connectors.folder import FolderConnector
from citeline.connectors.tickets import TicketsConnector
from citeline.domain import Access, Principal
from tests.support.deadline import syncs_until_gone

pytestmark = pytest.mark.integration

DANA = Principal("dana", ("staff", "support"))
PAGE = "---\naccess: {groups: [staff]}\n---\n# Lunar rover calibration\n\nCalibrate the lunar rover's wheel odometry every Tuesday.\n"


def _folder(tmp: Path, change: str) -> tuple[Callable[[], FolderConnector], Callable[[], None], str]:
    root = tmp / "wiki"
    root.mkdir()
    (root / "rover.md").write_text(PAGE)
    (root / "other.md").write_text("---\naccess: {groups: [staff]}\n---\n# Canteen\n\nLunch is at noon.\n")
    page = root / "rover.md"
    act = page.unlink if change == "deleted" else lambda: page.write_text(PAGE.replace("[staff]", "[board]"))
    return lambda: FolderConnector({"path": root}, Access.private()), act, "rover.md"


def _tickets(tmp: Path, change: str) -> tuple[Callable[[], TicketsConnector], Callable[[], None], str]:
    path = tmp / "tickets.jsonl"
    rows = [{"id": 1, "subject": "Lunar rover odometry drifts", "body": "The lunar rover's wheel odometry drifts "
             "after calibration.", "group": "support", "updated_at": "2025-01-01T00:00:00Z"},
            {"id": 2, "subject": "Invoice copy", "body": "Please resend the invoice.", "group": "support",
             "updated_at": "2025-01-02T00:00:00Z"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def act() -> None:
        kept = rows[1:] if change == "deleted" else [{**rows[0], "group": "legal"}, rows[1]]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    return lambda: TicketsConnector({"path": path}, Access.private()), act, "1"


def _catalog(tmp: Path, change: str) -> tuple[Callable[[], CatalogConnector], Callable[[], None], str]:
    path = tmp / "catalog.csv"
    head = "sku,name,description,access\n"
    rover = "LR-1,Lunar rover,Lunar rover with calibrated wheel odometry for regolith,staff\n"
    other = "DK-1,Dock,Charging dock for rovers,staff\n"
    path.write_text(head + rover + other)
    act = ((lambda: path.write_text(head + other)) if change == "deleted"
           else (lambda: path.write_text(head + rover.replace(",staff", ",board") + other)))
    return (lambda: CatalogConnector({"path": path, "id_column": "sku", "title_column": "name",
                                      "text_columns": ["description"], "access_column": "access"}, Access.private()),
            act, "LR-1")


@pytest.mark.parametrize("change", ["deleted", "made private"])
@pytest.mark.parametrize("kind", ["folder", "tickets", "catalog"])
def test_gone_within_one_sync(db, embedder, chunker, tmp_path, kind, change):
    make, act, external_id = {"folder": _folder, "tickets": _tickets, "catalog": _catalog}[kind](tmp_path, change)
    syncs = syncs_until_gone(db, embedder, chunker, source=f"{kind}-src", kind=kind, make_connector=make,
                             principal=DANA, query="lunar rover wheel odometry calibration", external_id=external_id,
                             change=act)
    print(f"\n[deadline] {kind}: {change} -> gone after {syncs} sync(s)")
    assert syncs == 1
