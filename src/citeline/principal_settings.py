"""The ``[[principal_sources]]`` tables of the settings: where principals and groups sync from.

Kept beside :mod:`citeline.settings` (which imports it) so that module stays within its size. Each entry names a
plugin of the entry-point group ``citeline.principal_sources`` (built-ins: ``ldap``, ``scim``) and carries that
plugin's own ``config`` table, validated by the plugin's ``Config`` model when it is built.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["PrincipalSourceSettings"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class PrincipalSourceSettings(BaseModel):
    """One ``[[principal_sources]]`` table: a plugin, its own config table and an optional schedule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: str = Field(description="entry point in group citeline.principal_sources (ldap, scim, ...)")
    config: dict[str, Any] = Field(default_factory=dict, description="the plugin's own options (its Config model)")
    adopt: bool = Field(False, description="take over listed principals that no source manages (added by hand or "
                        "at an OpenID Connect sign-in): the directory's groups replace theirs and the source removes "
                        "them when the directory drops them; off: they are reported as conflicts and left alone")
    refuse_empty: bool = Field(True, description="a sync whose listing is empty while the source manages "
                               "principals is refused (a wrong base DN or filter looks like everyone leaving)")
    schedule: str | None = Field(None, description="cron expression: `citeline scheduler` syncs it then "
                                 "(pull sources; SCIM is pushed and needs none)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"principal source name {v!r}: use lowercase letters, digits, '.', '_' and '-'")
        return v
