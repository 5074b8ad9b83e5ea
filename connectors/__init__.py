"""Source connectors. The contract is in :mod:`citeline.connectors.interfaces`."""

from citeline.connectors.interfaces import Change, Checkpoint, Connector, ConnectorConfig, Delete, Failure, Upsert

__all__ = ["Change", "Checkpoint", "Connector", "ConnectorConfig", "Delete", "Failure", "Upsert"]
