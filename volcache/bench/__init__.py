"""The pressure scenario behind ``volcache bench``.

Keys drawn from a Zipf distribution over a working set larger than a memory
limit; values of 64 KiB to 1 MiB that cost real CPU to make; a competing
process whose memory grows and shrinks. Each contestant (volcache on each
backend, cachetools ``LRUCache`` at several byte bounds, ``functools.lru_cache``,
no cache) runs in a memory cgroup of its own beside the competitor; without
writable cgroups the run is simulated on the sim backend.

The package imports nothing: ``worker`` and ``competitor`` run as ``python -m``.
"""
