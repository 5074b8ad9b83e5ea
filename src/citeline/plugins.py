"""Extension points, found through Python entry points.

=====================  ==============================================  =====================================
group                  what the entry point names                      contract
=====================  ==============================================  =====================================
citeline.connectors    a connector class                               :mod:`citeline.contracts.connector`
citeline.chunkers      ``factory(ChunkingSettings, tokenize)``          :class:`citeline.ingest.chunking.Chunker`
citeline.embedders     ``factory(EmbeddingSettings)``                   :class:`citeline.ingest.embedding.Embedder`
citeline.generators    ``factory(GenerationSettings, home)``            :mod:`citeline.contracts.generator`
citeline.verifiers     a class: ``cls(cls.Config(**options), embedder=)``  :mod:`citeline.answers.verification`
=====================  ==============================================  =====================================

Built-ins are registered in citeline's own ``pyproject.toml`` exactly as a third-party package
registers its own; there is no registry to poke at import time.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from citeline.errors import ConfigError

__all__ = ["CHUNKERS", "CONNECTORS", "EMBEDDERS", "GENERATORS", "VERIFIERS", "available", "load"]

CONNECTORS = "citeline.connectors"
CHUNKERS = "citeline.chunkers"
EMBEDDERS = "citeline.embedders"
GENERATORS = "citeline.generators"
VERIFIERS = "citeline.verifiers"


def available(group: str) -> list[str]:
    return sorted(ep.name for ep in entry_points(group=group))


def load(group: str, name: str) -> Any:
    """The object registered as ``name`` in ``group``; a clear error if there is none."""
    for ep in entry_points(group=group, name=name):
        try:
            return ep.load()
        except Exception as exc:  # a broken plugin must not look like a missing one
            raise ConfigError(f"plugin {name!r} in {group} ({ep.value}) failed to load: {exc}") from exc
    known = ", ".join(available(group)) or "none installed"
    raise ConfigError(f"no plugin named {name!r} in {group} (installed: {known}); install the package that "
                      "provides it or fix the name in citeline.toml")
