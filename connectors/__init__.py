"""Source connectors. The contract is in :mod:`citeline.contracts.connector`."""

from citeline.contracts.connector import Change, Checkpoint, Connector, ConnectorConfig, Delete, Failure, Upsert

__all__ = ["Change", "Checkpoint", "Connector", "ConnectorConfig", "Delete", "Failure", "Upsert"]
