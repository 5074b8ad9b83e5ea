"""A configurable test connector for the scheduler tests, loaded through a real entry point.

``tests/support/plugins`` holds a ``.dist-info`` folder that registers it in ``citeline.connectors``
the way a third-party package would; a test puts that folder on ``sys.path`` (or ``PYTHONPATH`` for a
``citeline scheduler`` subprocess) and names ``connector = "test-generated"`` in its citeline.toml.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from citeline.contracts.connector import Change, Checkpoint, ConnectorConfig, Upsert
from citeline.domain import Access, Document
from citeline.errors import ConnectorError

PLUGINS = Path(__file__).resolve().parent / "plugins"


class GeneratedConnector:
    """``count`` documents ``<prefix>0 ..``, ``delay_s`` seconds each, a checkpoint every ``every``.

    ``fail_while`` names a file: while it exists, ``validate()`` raises (a source that is down).
    """

    class Config(ConnectorConfig):
        count: int = Field(10, ge=0)
        delay_s: float = Field(0.0, ge=0)
        every: int = Field(5, ge=1)
        prefix: str = "g"
        fail_while: Path | None = None

    def __init__(self, config: Config, default: Access) -> None:
        self.config = config
        self.default = default

    def validate(self) -> None:
        if self.config.fail_while is not None and self.config.fail_while.exists():
            raise ConnectorError(f"source is down ({self.config.fail_while.name} exists)")

    def sync(self, cursor: Mapping[str, Any] | None) -> Iterator[Change]:
        start = int((cursor or {}).get("pos", 0))
        for pos in range(start, self.config.count):
            time.sleep(self.config.delay_s)
            ext = f"{self.config.prefix}{pos}"
            yield Upsert(Document(external_id=ext, title=f"Item {pos}", text=f"# Item {pos}\n\nGenerated item {pos}.",
                                  access=Access.everyone(), url=f"https://example.test/{ext}"))
            if (pos + 1) % self.config.every == 0:
                yield Checkpoint({"pos": pos + 1})
        yield Checkpoint({})

    def list_ids(self) -> list[str]:
        return [f"{self.config.prefix}{i}" for i in range(self.config.count)]
