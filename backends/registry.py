"""Which backends exist, which work here, and how to get one."""

from __future__ import annotations

import importlib
import os
from functools import cache
from typing import Any

from .contract import Backend, BackendUnavailable

# Best first: the order in which ``auto`` tries them.
_BACKENDS: dict[str, str | type[Backend]] = {
    "kernel": "kernel:KernelBackend",
    "uffd": "uffd:UffdBackend",
    "sim": "sim:SimBackend",
}


def backend_class(name: str) -> type[Backend]:
    """The class of a registered backend, imported on first use.

    Raises:
        ValueError: if no backend has that name.
    """
    try:
        target = _BACKENDS[name]
    except (KeyError, TypeError):
        known = ", ".join(_BACKENDS)
        raise ValueError(f"unknown volcache backend {name!r}; known: {known}") from None
    if isinstance(target, type):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(f".{module}", __package__), attr)


@cache
def _reason(name: str) -> str | None:
    return backend_class(name).unavailable_reason()


def available_backends() -> dict[str, str | None]:
    """Every registered backend, best first: None where it works here, else why not."""
    return {name: _reason(name) for name in _BACKENDS}


def get_backend(name: str = "auto", **options: Any) -> Backend:
    """A new backend by name, with its options.

    ``"auto"`` takes the backend named by the ``VOLCACHE_BACKEND`` environment
    variable if set, else the best one that works here.

    Raises:
        BackendUnavailable: the named backend does not work here; its
            ``reason`` says why.
        ValueError: no backend has that name.
    """
    if name == "auto":
        name = os.environ.get("VOLCACHE_BACKEND", "").strip() or "auto"
    if name == "auto":
        name = next(n for n, reason in available_backends().items() if reason is None)
    cls = backend_class(name)
    reason = _reason(name)
    if reason is not None:
        raise BackendUnavailable(name, reason)
    return cls(**options)
