"""The ``volcache`` command: ``info`` and ``bench``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import date
from typing import Any

from . import __version__, cgroups, machine
from .backends import available_backends, backend_class

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
MIN_LIMIT = 128 << 20  # an interpreter, the workload and a competitor must fit


class UsageError(Exception):
    """A bad command line: reported as one line, exit status 2."""


def parse_size(text: str) -> int:
    """``"256M"``, ``"1G"``, ``"300MiB"`` or bytes, as bytes."""
    match = _SIZE.match(text)
    if match is None:
        raise UsageError(f"--limit: {text!r} is not a size (use 256M, 1G, or bytes)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _info(args: argparse.Namespace) -> int:
    print(f"volcache {__version__}")
    print("backends (best first):")
    for name, reason in available_backends().items():
        caps = backend_class(name).capabilities
        print(f"  {name:7} {'available' if reason is None else 'unavailable: ' + reason}")
        print(f"          purged by {caps.purger}")
        print(f"          touching a purged page {caps.touch_purged}")
    reasons = available_backends()
    chosen = next(name for name, reason in reasons.items() if reason is None)
    passed = [name for name in reasons if name != chosen][: list(reasons).index(chosen)]
    why = f" ({' and '.join(passed)} unavailable: see above)" if passed else ""
    print(f"auto picks: {chosen}{why}")
    print("this machine:")
    for what, how in machine.report():
        print(f"  {what:23} {how}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.cluster and args.scenario != "tier":
        raise UsageError("--cluster goes with --scenario tier")
    if args.scenario == "many-small":
        return _many_small(args)
    if args.scenario == "tier":
        return _tier(args)
    if args.scenario == "shared":
        return _shared(args)
    if args.scenario == "speed":
        return _speed(args)
    from .bench import oracle, report, scenario
    from .bench.contestants import lineup
    from .bench.results import Settings

    limit = parse_size(args.limit if args.limit is not None else "256M")
    if limit < MIN_LIMIT:
        raise UsageError(f"--limit: {args.limit} is too small; at least {MIN_LIMIT >> 20}M")
    duration = args.duration if args.duration is not None else (5.0 if args.quick else 20.0)
    if duration <= 0:
        raise UsageError(f"--duration must be positive, got {duration:g}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install 'volcache[plot]'") from None
    if not 0 <= args.fill <= 4:
        raise UsageError(f"--fill must be within [0, 4] (times the limit), got {args.fill:g}")
    settings = Settings(limit=limit, duration=duration, fill=args.fill, seed=args.seed)
    reasons = available_backends()
    if args.backend is not None:
        if args.backend not in reasons:
            raise UsageError(f"--backend: no backend {args.backend!r}; known: {', '.join(reasons)}")
        if reasons[args.backend] is not None:
            raise UsageError(
                f"--backend: {args.backend} is unavailable here: {reasons[args.backend]}"
            )
    no_cgroups = cgroups.unavailable_reason()
    simulated = args.backend == "sim" or no_cgroups is not None
    if simulated:
        if no_cgroups is not None:
            print(f"no writable memory cgroup here ({no_cgroups}): running on the sim "
                  "backend's simulated memory instead")  # fmt: skip
        backends = ["sim"]
    else:
        real = [name for name in ("kernel", "uffd") if reasons.get(name) is None]
        backends = [args.backend] if args.backend else real
    contestants = lineup(backends)
    mode = "volcache bench (simulated memory)" if simulated else "volcache bench"
    where = scenario.machine_line()
    print(report.heading(settings, mode, where), flush=True)
    progress = _Progress(settings.duration)
    results = scenario.run(contestants, settings, simulated, progress, progress.done)
    print()
    yardstick = oracle.oracle(settings, results)
    print(report.table(results, yardstick))
    print()
    print(report.legend(results))
    print(f"\n{date.today().isoformat()}, volcache {__version__}.")
    print("gave back: memory the worker returned while the competitor grew; in: how long it")
    print("took to give back half of it. regenerated: values made again (misses). stall: the")
    print("competitor's allocation steps (4 MiB mapped and written) beside it, median/99th %.")
    print("oracle: an LRU of exactly the memory left at each moment (the limit less the")
    print("competitor and an idle worker), replaying the same lookups; of oracle: each hit")
    print("ratio as a fraction of its.")
    if args.json:
        report.write_json(args.json, settings, mode, where, results, yardstick)
        print(f"JSON: {args.json}")
    if args.plot:
        report.plot(args.plot, settings, results, report.heading(settings, mode, where))
        print(f"plot: {args.plot}")
    wrong = sum(r.wrong for r in results)
    if wrong:
        print(f"ERROR: {wrong} values came back wrong", file=sys.stderr)
        return 1
    return 0


def _many_small(args: argparse.Namespace) -> int:
    from .bench import many_small
    from .bench.scenario import machine_line

    limit = parse_size(args.limit if args.limit is not None else "128M")
    if limit < MIN_LIMIT:
        raise UsageError(f"--limit: {args.limit} is too small; at least {MIN_LIMIT >> 20}M")
    reason = cgroups.unavailable_reason()
    if reason is not None:
        raise UsageError(f"--scenario many-small needs a writable memory cgroup: {reason}")
    if backend_class("kernel").unavailable_reason() is not None:
        raise UsageError("--scenario many-small runs volcache on the kernel backend, "
                         "unavailable here")  # fmt: skip
    scale = 10 if args.quick else 1
    calls = {"memoize": 5_000_000 // scale, "mapping": 1_000_000 // scale}
    print(f"volcache bench, many small entries: {limit >> 20} MiB memory limit; memoize: "
          f"{calls['memoize']:,} calls returning 256 B; mapping: {calls['mapping']:,} "
          f"str keys with 4 KiB values; {machine_line()}", flush=True)  # fmt: skip
    results = many_small.compete(limit, calls, lambda line: print(f"  {line}", file=sys.stderr))
    print()
    print(many_small.table(results))
    print(f"\n{date.today().isoformat()}, volcache {__version__}.")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"scenario": "many-small", "limit": limit, "results": results}, out, indent=1)
        print(f"JSON: {args.json}")
    wrong = sum(r.get("wrong", 0) for r in results)
    if wrong:
        print(f"ERROR: {wrong} values came back wrong", file=sys.stderr)
        return 1
    return 0


def _tier(args: argparse.Namespace) -> int:
    from .bench import cluster, servers, tiered
    from .bench.scenario import machine_line

    reason = cluster.missing_cluster() if args.cluster else servers.missing("redis")
    if reason is not None:
        raise UsageError(f"--scenario tier runs a Redis server: {reason}")
    try:
        import redis  # noqa: F401
    except ImportError:
        raise UsageError("--scenario tier needs redis-py: pip install 'volcache[redis]'") from None
    limit = parse_size(args.limit if args.limit is not None else "128M")
    if limit < MIN_LIMIT:
        raise UsageError(f"--limit: {args.limit} is too small; at least {MIN_LIMIT >> 20}M")
    duration = args.duration if args.duration is not None else (5.0 if args.quick else 20.0)
    backend = _worker_backend(args)
    shared = "a Redis Cluster (3 masters, 3 replicas)" if args.cluster else "one Redis"
    print(f"volcache bench, shared tier: {tiered.WORKERS} workers, each with a {limit >> 20} MiB "
          f"memory limit, {duration:g} s, volcache on {backend}; without a tier, then with "
          f"{shared}; {machine_line()}", flush=True)  # fmt: skip
    outcome = tiered.compete(limit, duration, backend, args.seed, cluster=args.cluster)
    if outcome["cgroups"] is not None:
        print(f"(no memory cgroup here: {outcome['cgroups']}; the workers ran unlimited)")
    print()
    print(tiered.table(outcome))
    print(f"\n{date.today().isoformat()}, volcache {__version__}.")
    print("regenerated: values made again by that worker; tier hits: values found in Redis")
    print("instead (made by either worker).")
    _dump(args.json, {"scenario": "tier", "limit": limit, **outcome})
    workers = [r for rs in outcome["rounds"].values() for r in rs]
    if any("failed" in r for r in workers):
        return 1
    if sum(r["wrong"] for r in workers):
        print("ERROR: values came back wrong", file=sys.stderr)
        return 1
    return 0


def _speed(args: argparse.Namespace) -> int:
    from .bench import speed
    from .bench.scenario import machine_line

    reason = available_backends().get("kernel", "unknown")
    if reason is not None:
        raise UsageError(f"--scenario speed measures the kernel backend: {reason}")
    missing = [peer for peer, module in (("cachebox", "cachebox"), ("lru-dict", "lru"))
               if not speed.has(module)]  # fmt: skip
    print(f"volcache bench, speed: each operation in alternating rounds, the median round of "
          f"each contestant; {machine_line()}", flush=True)  # fmt: skip
    if missing:
        print(f"(not installed, left out: {', '.join(missing)}; pip install 'volcache[bench]')")

    def progress(name: str) -> None:
        print(f"  {name}...", file=sys.stderr, flush=True)

    found = speed.measure(rounds=9 if args.quick else 21, progress=progress)
    print()
    print(speed.table(found))
    print(f"\n{date.today().isoformat()}, volcache {__version__}. Nanoseconds a call; ratio: "
          "volcache's time over cachetools' (over the floor's for idle hits).")  # fmt: skip
    _dump(args.json, {"scenario": "speed", "seconds": found})
    return 0


def _worker_backend(args: argparse.Namespace) -> str:
    """The backend of a scenario's workers: --backend, else kernel where it works, else sim."""
    reasons = available_backends()
    backend: str = args.backend or ("kernel" if reasons.get("kernel") is None else "sim")
    if reasons.get(backend, "unknown") is not None:
        raise UsageError(f"--backend: {backend} is unavailable here")
    return backend


def _dump(path: str | None, outcome: dict[str, Any]) -> None:
    """The outcome as JSON at ``path`` (--json), if given."""
    if path:
        with open(path, "w") as out:
            json.dump(outcome, out, indent=1)
        print(f"JSON: {path}")


def _shared(args: argparse.Namespace) -> int:
    from .bench import shared_scenario
    from .bench.scenario import machine_line

    limit = parse_size(args.limit if args.limit is not None else "256M")
    if limit < MIN_LIMIT:
        raise UsageError(f"--limit: {args.limit} is too small; at least {MIN_LIMIT >> 20}M")
    if not 1 <= args.workers <= 64:
        raise UsageError(f"--workers must be within [1, 64], got {args.workers}")
    duration = args.duration if args.duration is not None else (5.0 if args.quick else 20.0)
    if duration <= 0:
        raise UsageError(f"--duration must be positive, got {duration:g}")
    backend = _worker_backend(args)
    print(f"volcache bench, shared: {args.workers} workers and the competitor in one "
          f"{limit >> 20} MiB memory limit, {duration:g} s a round; private caches (volcache on "
          f"{backend}), one shared cache, diskcache; {machine_line()}", flush=True)  # fmt: skip
    outcome = shared_scenario.compete(limit, duration, backend, args.workers, args.seed)
    if outcome["cgroups"] is not None:
        print(f"(no memory cgroup here: {outcome['cgroups']}; the workers ran unlimited)")
    print()
    print(shared_scenario.table(outcome))
    print(f"\n{date.today().isoformat()}, volcache {__version__}.")
    print("hit ratio: lookups answered without making the value (by any worker's cache);")
    print("killed: processes the OOM killer took (the competitor included).")
    _dump(args.json, {"scenario": "shared", "limit": limit, **outcome})
    rounds = [r for r in outcome["rounds"].values() if "skipped" not in r]
    if any(shared_scenario.summarize(r)["wrong"] for r in rounds) or outcome["memory"].get("wrong"):
        print("ERROR: values came back wrong", file=sys.stderr)
        return 1
    return 0


class _Progress:
    """A progress bar per contestant on stderr (one line each when not a terminal)."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.tty = sys.stderr.isatty()

    def __call__(self, contestant: Any, t: float, sample: dict[str, Any]) -> None:
        if not self.tty:
            return
        filled = min(20, int(20 * t / self.duration))
        bar = "#" * filled + "." * (20 - filled)
        clock = f"{min(t, self.duration):5.1f}/{self.duration:g} s"
        line = f"  {contestant.name:16} [{bar}] {clock}  {sample.get('ops', 0)} lookups"
        print(f"\r{line}", end="", file=sys.stderr, flush=True)

    def done(self, result: Any) -> None:
        from .bench.report import status

        state = status(result)
        line = (f"  {result.contestant.name:16} {state}: {result.ops} lookups, "
                f"hit ratio {result.hit_ratio:.1%}")  # fmt: skip
        print(f"\r{line:<72}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="volcache", description="Caches that give memory back.")
    parser.add_argument("--version", action="version", version=f"volcache {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, backends and what this machine offers")
    bench = commands.add_parser(
        "bench",
        help="compare caches under real memory pressure",
        description="volcache and the caches people use today, side by side under a memory "
        "limit with a competing process (a memory cgroup; simulated without one).",
    )
    bench.add_argument("--quick", action="store_true", help="5 s per contestant (under a minute)")
    bench.add_argument("--duration", type=float, help="seconds per contestant (default 20)")
    bench.add_argument(
        "--scenario",
        choices=("pressure", "many-small", "tier", "shared", "speed"),
        default="pressure",
        help="pressure (default): Zipf lookups beside a competitor; many-small: millions of "
        "small entries under a limit; tier: two workers without and with a shared Redis; "
        "shared: N workers with private caches, one shared cache, and diskcache; speed: "
        "each operation beside cachetools, cachebox, lru-dict and functools (under a minute)",
    )
    bench.add_argument(
        "--limit", help="the memory limit (default 256M; 128M for --scenario many-small)"
    )
    bench.add_argument("--backend", help="only this volcache backend (sim: simulated memory)")
    bench.add_argument("--json", metavar="PATH", help="write the results, samples included")
    bench.add_argument("--plot", metavar="PATH", help="a PNG of hit ratio and memory over time")
    bench.add_argument(
        "--fill",
        type=float,
        default=1.0,
        help="values each cache is offered before the clock starts, as a multiple of the limit "
        "(default 1: every cache starts as full as it can be)",
    )
    bench.add_argument("--seed", type=int, default=0, help="the workload's seed")
    bench.add_argument(
        "--workers", type=int, default=4, help="--scenario shared: worker processes (default 4)"
    )
    bench.add_argument(
        "--cluster",
        action="store_true",
        help="--scenario tier: share a Redis Cluster of six nodes (started here) instead of "
        "one Redis",
    )
    args = parser.parse_args(argv)
    try:
        return {"info": _info, "bench": _bench}[args.command](args)
    except UsageError as exc:
        print(f"volcache {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"volcache {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line, not a traceback
        print(f"volcache {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
