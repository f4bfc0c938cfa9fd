"""ThumbnailCache: a hit, a pin, and regeneration after a purge, by image format."""

from __future__ import annotations

import pytest

Image = pytest.importorskip("PIL.Image")
from volcache import ThumbnailCache  # noqa: E402


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    gradient = Image.linear_gradient("L").resize((2000, 1500)).convert("RGB")
    gradient.save(folder / "photo.jpg", quality=90)
    gradient.save(folder / "photo.png")
    return folder


@pytest.fixture
def thumbnails(backend):
    with ThumbnailCache((256, 256), backend=backend) as cache:
        yield cache


@pytest.mark.parametrize("kind", ["jpg", "png"])
def test_regenerate_after_purge(benchmark, thumbnails, photos, kind):
    """Decode a 2000x1500 photo into a 256 px thumbnail (JPEG: draft mode)."""
    benchmark.group = f"thumbnail {kind}"
    path = photos / f"photo.{kind}"

    def purge():
        thumbnails.cache.volatilize()
        thumbnails.cache.backend.reclaim(1 << 30)

    image = benchmark.pedantic(thumbnails.get, args=(path,), setup=purge, rounds=20)
    assert image.size == (256, 192)


@pytest.mark.parametrize("kind", ["jpg", "png"])
def test_hit(benchmark, thumbnails, photos, kind):
    """A hot hit: a copy of the cached pixels, the caller's to keep."""
    benchmark.group = f"thumbnail {kind}"
    path = photos / f"photo.{kind}"
    thumbnails.get(path)
    assert benchmark(thumbnails.get, path).size == (256, 192)


@pytest.mark.parametrize("kind", ["jpg", "png"])
def test_pin(benchmark, thumbnails, photos, kind):
    """A pin of an idle thumbnail: re-pinned, no copy."""
    benchmark.group = f"thumbnail {kind}"
    path = photos / f"photo.{kind}"
    thumbnails.get(path)

    def pin():
        with thumbnails.pin(path) as image:
            return image.size

    def idle():
        thumbnails.cache.volatilize()

    assert benchmark.pedantic(pin, setup=idle, rounds=200) == (256, 192)
