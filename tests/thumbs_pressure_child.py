"""Run inside a memory cgroup: thumbnails of far more images than the limit holds.

Usage: python thumbs_pressure_child.py IMAGE_DIR COUNT PASSES BACKEND

Image i is a solid colour, so its thumbnail must be exactly that colour: any
wrong byte (a purged page read as if intact) shows. Prints one JSON line.
"""

from __future__ import annotations

import json
import random
import resource
import sys

from volcache import ThumbnailCache


def colour(i: int) -> tuple[int, int, int]:
    return (i % 251, (i * 7) % 253, (i * 13) % 256)


def main() -> None:
    folder, count, passes, backend = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    wrong = gets = pins = 0
    order = list(range(count))
    with ThumbnailCache((256, 256), backend=backend) as thumbnails:
        for round_ in range(passes):
            random.Random(round_).shuffle(order)
            for i in order:
                expected = tuple((v, v) for v in colour(i))
                image = thumbnails.get(f"{folder}/{i}.png")
                gets += 1
                wrong += image.getextrema() != expected
                if i % 10 == 0:
                    with thumbnails.pin(f"{folder}/{i}.png") as pinned:
                        pins += 1
                        wrong += pinned.getextrema()[:3] != expected
        info = thumbnails.info()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"gets": gets, "pins": pins, "wrong": wrong, "regenerated": info.regenerated,
                      "purged": info.purged, "thumbnail_bytes": count * 256 * 192 * 4,
                      "peak_rss": peak}))  # fmt: skip


if __name__ == "__main__":
    main()
