"""What :class:`citeline.Citeline` hands out, one object per concern (the facade only wires them).

* :class:`~citeline.operations.admin.Admin` (``cl.admin``): principals and API keys. Every change takes the
  acting identity and commits together with its audit row, or not at all; the facade exposes no other way
  to change them.
* :class:`~citeline.operations.adapters.Adapters` (``cl.adapters``): the team LoRA adapters' lifecycle
  (register, promote, retire, sync to the model servers; each audited) and the registry's listings.
* :class:`~citeline.operations.sources.Sources` (``cl.sources``): building connectors, each source's status,
  the scheduler.
* :class:`~citeline.operations.database.DatabaseLifecycle` (``cl.database``): the migrations' status, migrating,
  dropping a namespace (``citeline db``).

Layer: above evaluation and below the facade (they may import the core; nothing in the core imports them).
"""
