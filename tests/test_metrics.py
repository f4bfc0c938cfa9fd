"""The Prometheus collector: its exposition, parsed back by prometheus_client."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from volcache import VolatileCache, cached
from volcache.metrics import PrometheusCollector


def scrape(registry) -> dict[tuple[str, str], float]:
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples[(sample.name, sample.labels["cache"])] = sample.value
    return samples


def test_a_cache_and_a_decorated_function_scraped_and_parsed_back():
    registry = CollectorRegistry()
    with VolatileCache(backend="sim", regenerate=lambda k: b"r", maxsize=2) as cache:
        PrometheusCollector(cache, "pages", registry=registry)

        @cached(backend="sim")
        def f(x):
            return b"%d" % x

        PrometheusCollector(f, "f", registry=registry)
        for key in ("a", "b", "c", "a"):
            cache[key]
        f(1), f(1), f(2)
        cache.backend.reclaim(1 << 30)
        samples = scrape(registry)
        info = cache.info()
        for name in ("hits", "misses", "purged", "regenerated", "evictions"):
            assert samples[(f"volcache_{name}_total", "pages")] == getattr(info, name)
        assert samples[("volcache_regeneration_seconds_total", "pages")] == pytest.approx(
            info.regeneration_seconds
        )
        assert samples[("volcache_entries", "pages")] == info.entries == 2
        assert samples[("volcache_nonvolatile_bytes", "pages")] == info.nonvolatile_bytes
        assert samples[("volcache_volatile_bytes", "pages")] == info.volatile_bytes
        assert samples[("volcache_hits_total", "f")] == 1
        assert samples[("volcache_misses_total", "f")] == 2
        assert samples[("volcache_entries", "f")] == 2
        assert ("volcache_tier_hits_total", "pages") not in samples
        cache["d"]  # read at scrape time: nothing to update between scrapes
        assert scrape(registry)[("volcache_misses_total", "pages")] == info.misses + 1


def test_the_collector_names_what_it_needs():
    with pytest.raises(TypeError, match="collects"):
        PrometheusCollector(object(), "x", registry=None)
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "import volcache, volcache.metrics\n"
        "try:\n"
        "    volcache.metrics.PrometheusCollector(volcache.VolatileCache(backend='sim'), 'x')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "pip install 'volcache[metrics]'" in out
