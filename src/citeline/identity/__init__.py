"""Principals that sync themselves: the reconciling of a source's listing with the principals it manages
(:mod:`~citeline.identity.directory`), the LDAP source (:mod:`~citeline.identity.ldap`) and the SCIM 2.0 store
(:mod:`~citeline.identity.scim`). The contract is :mod:`citeline.contracts.principal_source`; the audited
operations that use these are :mod:`citeline.operations.principal_sources`.

Layer: above access (it revokes keys through :class:`citeline.access.principals.PrincipalStore`), below ingest.
"""
