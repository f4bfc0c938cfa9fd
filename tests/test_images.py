"""ThumbnailCache on generated JPEG and PNG files: modes, file changes, bad files, purges."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from volcache import cgroups

from .conftest import need_backend, require

Image = pytest.importorskip("PIL.Image", reason="ThumbnailCache needs Pillow (the images extra)")
from volcache import ThumbnailCache, ThumbnailError  # noqa: E402

HERE = Path(__file__).resolve().parent


@pytest.fixture
def thumbnails(backend_name):
    with ThumbnailCache((128, 128), backend=backend_name) as cache:
        yield cache


def make(path: Path, mode: str, size: tuple[int, int], colour, **save) -> Path:
    Image.new(mode, size, colour).save(path, **save)
    return path


def test_thumbnails_keep_aspect_and_colour(thumbnails, tmp_path):
    jpeg = make(tmp_path / "wide.jpg", "RGB", (1600, 1200), (200, 40, 10), quality=95)
    png = make(tmp_path / "tall.png", "RGB", (300, 900), (10, 20, 30))
    grey = make(tmp_path / "grey.png", "L", (500, 500), 77)
    alpha = make(tmp_path / "alpha.png", "RGBA", (256, 256), (255, 0, 0, 128))
    image = thumbnails.get(jpeg)
    assert (image.mode, image.size) == ("RGB", (128, 96))
    assert all(
        abs(a - b) <= 3 for a, b in zip(image.getpixel((64, 48)), (200, 40, 10), strict=True)
    )
    image = thumbnails.get(png)
    assert (image.mode, image.size, image.getextrema()) == (
        "RGB",
        (43, 128),
        ((10, 10), (20, 20), (30, 30)),
    )
    assert thumbnails.get(grey).mode == "L" and thumbnails.get(grey).getpixel((1, 1)) == 77
    assert thumbnails.get(alpha).mode == "RGBA" and thumbnails.get(alpha).getpixel((5, 5))[3] == 128


def test_get_returns_an_image_the_caller_owns(thumbnails, tmp_path):
    path = make(tmp_path / "a.png", "RGB", (200, 200), (1, 2, 3))
    first = thumbnails.get(path)
    first.paste((9, 9, 9), (0, 0, 128, 128))
    assert thumbnails.get(path).getpixel((0, 0)) == (1, 2, 3)


def test_pin_gives_an_image_over_pinned_memory_without_a_copy(thumbnails, tmp_path):
    path = make(tmp_path / "a.png", "RGB", (256, 256), (5, 6, 7))
    thumbnails.get(path)
    thumbnails.cache.volatilize()
    with thumbnails.pin(path) as image:
        assert (image.mode, image.size, image.readonly) == ("RGBX", (128, 128), 1)
        thumbnails.cache.backend.reclaim(1 << 30)  # pinned: nothing to purge
        assert image.getpixel((3, 3))[:3] == (5, 6, 7)
        assert thumbnails.info().pinned_entries == 1
    assert thumbnails.info().pinned_entries == 0
    with pytest.raises(ValueError, match="closed image"):
        image.getpixel((0, 0))


def test_a_changed_file_is_decoded_again(thumbnails, tmp_path):
    path = make(tmp_path / "a.png", "RGB", (200, 200), (1, 1, 1))
    assert thumbnails.get(path).getpixel((0, 0)) == (1, 1, 1)
    time.sleep(0.01)
    make(path, "RGB", (400, 200), (2, 2, 2))
    image = thumbnails.get(path)
    assert image.getpixel((0, 0)) == (2, 2, 2) and image.size == (128, 64)
    assert len(thumbnails) == 1  # the old thumbnail was dropped


def test_missing_and_bad_files_raise_clearly_and_cache_nothing(thumbnails, tmp_path):
    with pytest.raises(FileNotFoundError):
        thumbnails.get(tmp_path / "nothing.png")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not a jpeg" * 10)
    with pytest.raises(ThumbnailError, match=r"garbage\.jpg"):
        thumbnails.get(garbage)
    truncated = make(tmp_path / "t.jpg", "RGB", (800, 800), (3, 3, 3), quality=90)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(ThumbnailError, match=r"t\.jpg"):
        thumbnails.get(truncated)
    assert len(thumbnails) == 0 and thumbnails.info().stored_bytes == 0
    good = make(tmp_path / "good.png", "RGB", (64, 64), (4, 4, 4))
    assert thumbnails.get(good).getpixel((0, 0)) == (4, 4, 4)


def test_purged_thumbnails_are_decoded_again(thumbnails, tmp_path):
    paths = [make(tmp_path / f"{i}.png", "RGB", (300, 300), (i, i, i)) for i in range(20)]
    for path in paths:
        thumbnails.get(path)
    thumbnails.cache.volatilize()
    thumbnails.cache.backend.reclaim(1 << 30)
    for i, path in enumerate(paths):
        assert thumbnails.get(path).getextrema() == ((i, i),) * 3
    info = thumbnails.info()
    assert info.purged == 20 and info.regenerated == 40


def test_records_stay_bounded_by_the_thumbnails_held(backend_name, tmp_path):
    """What pin() and a changed file need is recorded per file, for the thumbnails
    the cache holds: evicted, deleted or purged ones leave no record behind."""
    with ThumbnailCache((8, 8), backend=backend_name, maxsize=5) as thumbnails:
        for i in range(60):
            path = make(tmp_path / f"{i}.png", "L", (16, 16), i)
            thumbnails.get(path)
            assert len(thumbnails._current) <= 2 * len(thumbnails) <= 10
            if i % 2:
                path.unlink()  # gone with its thumbnail still cached: evicted later
        kept = make(tmp_path / "kept.png", "L", (16, 16), 200)
        with thumbnails.pin(kept) as image:
            assert image.getpixel((0, 0)) == 200
        for key in list(thumbnails.cache):
            del thumbnails.cache[key]
        thumbnails.get(kept)
        assert list(thumbnails._current) == [str(kept)]


def test_a_file_that_is_gone_takes_its_thumbnail_and_record_along(thumbnails, tmp_path):
    path = make(tmp_path / "a.png", "RGB", (64, 64), (1, 2, 3))
    other = make(tmp_path / "b.png", "RGB", (64, 64), (4, 5, 6))
    thumbnails.get(path)
    thumbnails.get(other)
    path.unlink()
    with pytest.raises(FileNotFoundError):
        thumbnails.get(path)
    assert len(thumbnails) == 1 and list(thumbnails._current) == [str(other)]


def test_pin_wraps_a_thumbnail_whose_record_was_dropped(thumbnails, tmp_path):
    """A record trimmed while another thread stored its thumbnail: the cached image
    says its mode and size."""
    path = make(tmp_path / "a.png", "RGB", (256, 128), (7, 8, 9))
    thumbnails.get(path)
    thumbnails._current.clear()
    with thumbnails.pin(path) as image:
        assert (image.mode, image.size) == ("RGBX", (128, 64))
        assert image.getpixel((3, 3))[:3] == (7, 8, 9)
    assert thumbnails.info().regenerated == 1


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="positive"):
        ThumbnailCache((0, 10), backend="sim")
    with pytest.raises(TypeError, match="width, height"):
        ThumbnailCache("big", backend="sim")


def test_volcache_imports_without_pillow_and_says_what_to_install():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["PIL"] = None
        import volcache
        try:
            volcache.ThumbnailCache()
        except ImportError as exc:
            print(exc)
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "pip install 'volcache[images]'" in run.stdout


def test_thousands_of_thumbnails_within_a_memory_limit(tmp_path):
    """1200 thumbnails (230 MiB of pixels) under a 160 MiB cgroup: kept alive by purges."""
    need_backend("kernel")
    require("kernel", cgroups.unavailable_reason())
    count = 1200
    for i in range(count):
        colour = (i % 251, (i * 7) % 253, (i * 13) % 256)
        Image.new("RGB", (512, 384), colour).save(tmp_path / f"{i}.png")
    with cgroups.MemoryCgroup(160 << 20, name="volcache-test") as group:
        child = [
            sys.executable,
            str(HERE / "thumbs_pressure_child.py"),
            str(tmp_path),
            str(count),
            "2",
            "kernel",
        ]
        run = subprocess.run(group.command(child), capture_output=True, text=True, timeout=300)
        oom_kills = group.oom_kills()
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    assert oom_kills == 0 and result["wrong"] == 0
    assert result["gets"] == 2 * count and result["thumbnail_bytes"] > 160 << 20
    assert result["purged"] > 0 and result["regenerated"] > count
