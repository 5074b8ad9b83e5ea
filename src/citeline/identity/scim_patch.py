"""SCIM 2.0 PATCH (RFC 7644 §3.5.2) and ``eq`` filters, as Okta and Entra ID send them, on plain resources.

A user or group is a dict in its SCIM JSON shape. :func:`patch` applies a list of operations to a copy:
``op`` in any case (Entra sends ``Replace``); a missing ``path`` with an object ``value`` (Okta:
``{"op": "replace", "value": {"active": false}}``); simple and sub-attribute paths (``name.givenName``);
filtered paths (``emails[type eq "work"].value``; ``members[value eq "ID"]`` to remove one member); Entra's
string booleans (``"False"``). Group members are handled as a set of ids. Anything else is a
:class:`citeline.errors.ScimError` (400 ``invalidPath``/``invalidValue``/``invalidSyntax``): nothing is applied.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from citeline.errors import ScimError

__all__ = ["parse_eq_filter", "patch"]

_FILTER = re.compile(r'^\s*([A-Za-z][\w.:]*)\s+eq\s+"((?:[^"\\]|\\.)*)"\s*$', re.IGNORECASE)
_PATH = re.compile(r'^([A-Za-z][\w]*)(?:\[\s*(\w+)\s+eq\s+"((?:[^"\\]|\\.)*)"\s*\])?(?:\.([A-Za-z]\w*))?$',
                   re.IGNORECASE)
_EXTENSIONS = ("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",)
_URN = re.compile(r"^urn:ietf:params:scim:schemas:core:2\.0:(?:User|Group):", re.IGNORECASE)


def parse_eq_filter(text: str, allowed: tuple[str, ...]) -> tuple[str, str]:
    """``attr eq "value"`` → (attr as spelled in ``allowed``, value); other filters are refused (400)."""
    m = _FILTER.match(text)
    if m is None:
        raise ScimError(f"unsupported filter {text[:200]!r}: only 'ATTRIBUTE eq \"value\"' is supported "
                        f"(ATTRIBUTE one of {', '.join(allowed)})", scim_type="invalidFilter")
    attr, value = m.group(1), m.group(2).replace('\\"', '"').replace("\\\\", "\\")
    for name in allowed:
        if name.lower() == attr.lower():
            return name, value
    raise ScimError(f"unsupported filter attribute {attr!r}: filter on {', '.join(allowed)}",
                    scim_type="invalidFilter")


def _bool(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _key(resource: dict[str, Any], name: str) -> str:
    """The resource's own spelling of attribute ``name`` (attribute names are case-insensitive)."""
    for k in resource:
        if k.lower() == name.lower():
            return k
    return name


def _members(value: Any) -> dict[str, dict[str, Any]]:
    """Members by id (``{"value": id, "display": ...}``), in the order given."""
    items = value if isinstance(value, list) else [value]
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if not (isinstance(item, dict) and isinstance(item.get("value"), str)):
            raise ScimError("members must be a list of {\"value\": \"<user id>\"} objects", scim_type="invalidValue")
        out[item["value"]] = {k: v for k, v in item.items() if k in ("value", "display")}
    return out


def _members_op(resource: dict[str, Any], op: str, value: Any, member_filter: str | None) -> None:
    current = _members(resource.get("members", []))
    if op == "remove":
        gone = {member_filter} if member_filter is not None else set(_members(value)) if value else set(current)
        current = {k: m for k, m in current.items() if k not in gone}
    elif op == "add":
        current = {**current, **_members(value)}
    else:
        current = _members(value)
    resource["members"] = list(current.values())


def _set_path(resource: dict[str, Any], op: str, path: str, value: Any) -> None:
    path = _URN.sub("", path)
    whole = next((k for k in (*resource.get("schemas", ()), *_EXTENSIONS) if k.lower() == path.lower()), None)
    if whole is not None:  # a whole extension: urn:ietf:params:scim:schemas:extension:enterprise:2.0:User
        key = _key(resource, whole)
        if op == "remove":
            resource.pop(key, None)
        elif not isinstance(value, dict):
            raise ScimError(f"PATCH path {path!r} needs an object value", scim_type="invalidValue")
        elif op == "add" and isinstance(resource.get(key), dict):
            resource[key] = {**resource[key], **value}
        else:
            resource[key] = value
        return
    if path.lower().startswith("urn:"):  # an extension's attribute: urn:...:enterprise:2.0:User:department
        ext, _, attr_name = path.rpartition(":")
        holder = resource.setdefault(ext, {})
        if not (isinstance(holder, dict) and attr_name):
            raise ScimError(f"unsupported PATCH path {path[:200]!r}", scim_type="invalidPath")
        if op == "remove":
            holder.pop(attr_name, None)
        else:
            holder[attr_name] = value
        return
    m = _PATH.match(path)
    if m is None:
        raise ScimError(f"unsupported PATCH path {path[:200]!r}", scim_type="invalidPath")
    attr, f_attr, f_value, sub = m.groups()
    if attr.lower() == "members":
        if f_attr is not None and (f_attr.lower() != "value" or sub is not None):
            raise ScimError(f"unsupported PATCH path {path!r}: filter members by value", scim_type="invalidPath")
        _members_op(resource, op, value, f_value)
        return
    key = _key(resource, attr)
    if f_attr is not None:  # a multi-valued attribute's element: emails[type eq "work"].value
        items = resource.setdefault(key, [])
        if not isinstance(items, list):
            raise ScimError(f"PATCH path {path!r}: {attr} is not multi-valued", scim_type="invalidPath")
        match = [i for i in items if isinstance(i, dict) and str(i.get(f_attr)) == f_value]
        if op == "remove":
            resource[key] = [i for i in items if i not in match] if sub is None else items
            for i in match if sub is not None else ():
                i.pop(sub, None)
            return
        if not match:
            match = [{f_attr: f_value}]
            items.append(match[0])
        for i in match:
            if sub is None and isinstance(value, dict):
                i.update(value)
            elif sub is not None:
                i[sub] = value
        return
    if sub is not None:
        parent = resource.setdefault(key, {})
        if not isinstance(parent, dict):
            raise ScimError(f"PATCH path {path!r}: {attr} is not complex", scim_type="invalidPath")
        if op == "remove":
            parent.pop(sub, None)
        else:
            parent[sub] = value
        return
    if op == "remove":
        resource.pop(key, None)
    elif op == "add" and isinstance(resource.get(key), list) and isinstance(value, list):
        resource[key] = resource[key] + [v for v in value if v not in resource[key]]
    else:
        resource[key] = _bool(value) if attr.lower() == "active" else value


def patch(resource: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """``resource`` with ``operations`` applied (a new dict; the given one is left as it was)."""
    out = copy.deepcopy(resource)
    if not isinstance(operations, list) or not operations:
        raise ScimError("PATCH needs a non-empty Operations list", scim_type="invalidSyntax")
    for n, operation in enumerate(operations, 1):
        if not isinstance(operation, dict):
            raise ScimError(f"PATCH operation #{n} is not an object", scim_type="invalidSyntax")
        op = str(operation.get("op", "")).lower()
        path, value = operation.get("path"), operation.get("value")
        if op not in ("add", "replace", "remove"):
            raise ScimError(f"PATCH operation #{n}: op must be add, replace or remove", scim_type="invalidSyntax")
        if path is None:
            if op == "remove" or not isinstance(value, dict):
                raise ScimError(f"PATCH operation #{n}: without a path, {op} needs an object value",
                                scim_type="noTarget" if op == "remove" else "invalidValue")
            for attr, v in value.items():
                _set_path(out, op, str(attr), v)
        elif not isinstance(path, str):
            raise ScimError(f"PATCH operation #{n}: path must be a string", scim_type="invalidPath")
        else:
            _set_path(out, op, path, value)
    return out
