"""volcache: caches that give memory back.

Values live in memory marked volatile while idle; under memory pressure the
operating system discards it instead of swapping or killing the process, and
the cache regenerates what was lost on the next access.
"""

from importlib.metadata import PackageNotFoundError, version

from .backends import BackendUnavailable, available_backends, get_backend
from .budget import MemoryBudget
from .cache import VolatileCache
from .codecs import Codec, DefaultCodec, NumpyCodec, PickleCodec
from .decorator import cached, lru_cache
from .flight import DeadlockError
from .images import ThumbnailCache, ThumbnailError
from .info import CacheInfo
from .shared import SharedVolatileCache
from .wrappers import BoundCachedMethod, CachedFunction

try:
    __version__ = version("volcache")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "BackendUnavailable",
    "BoundCachedMethod",
    "CacheInfo",
    "CachedFunction",
    "Codec",
    "DeadlockError",
    "DefaultCodec",
    "MemoryBudget",
    "NumpyCodec",
    "PickleCodec",
    "SharedVolatileCache",
    "ThumbnailCache",
    "ThumbnailError",
    "VolatileCache",
    "__version__",
    "available_backends",
    "cached",
    "get_backend",
    "lru_cache",
]
