"""Backends: private anonymous memory with the volatility of Linux's vrange proposal.

Every backend hands out :class:`Region` objects and sets the mode of their
pages with :meth:`Backend.vrange`; :func:`get_backend` picks one by name, and
:func:`available_backends` says which work here and why the others do not.
"""

from .contract import (
    NONVOLATILE,
    VOLATILE,
    Backend,
    BackendUnavailable,
    Capabilities,
    Mode,
    Region,
    VRange,
)
from .registry import available_backends, backend_class, get_backend

__all__ = [
    "NONVOLATILE",
    "VOLATILE",
    "Backend",
    "BackendUnavailable",
    "Capabilities",
    "Mode",
    "Region",
    "VRange",
    "available_backends",
    "backend_class",
    "get_backend",
]
