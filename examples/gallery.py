"""A thumbnail gallery over images this script makes itself.

Run: python examples/gallery.py   (needs Pillow: pip install 'volcache[images]')
"""

import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from volcache import ThumbnailCache

folder = Path(tempfile.mkdtemp(prefix="volcache-gallery-"))

# Forty "photos": big JPEGs, each a coloured gradient with its number on it.
font = ImageFont.load_default(size=700)
for i in range(40):
    shade = Image.linear_gradient("L").resize((1600, 1200))
    tint = Image.new("RGB", (1600, 1200), (40 + 5 * i, 180 - 4 * i, 120 + 3 * i))
    photo = Image.composite(tint, Image.new("RGB", (1600, 1200), "black"), shade)
    ImageDraw.Draw(photo).text((800, 600), str(i), font=font, anchor="mm", fill="white")
    photo.save(folder / f"photo{i:02}.jpg", quality=85)

with ThumbnailCache((160, 120)) as thumbnails:
    start = time.perf_counter()
    sheet = Image.new("RGB", (8 * 160, 5 * 120), "white")
    for i, path in enumerate(sorted(folder.glob("*.jpg"))):
        # get() decodes the file the first time (JPEG draft mode: at 1/8 of its size)
        # and returns an image the caller owns.
        sheet.paste(thumbnails.get(path), ((i % 8) * 160, (i // 8) * 120))
    first = time.perf_counter() - start

    start = time.perf_counter()
    for path in sorted(folder.glob("*.jpg")):
        # pin() lends the cached pixels themselves, without a copy, for the block.
        with thumbnails.pin(path) as pixels:
            assert pixels.size[0] == 160
    again = time.perf_counter() - start

    sheet.save(folder / "contact-sheet.png")
    info = thumbnails.info()
    print(f"decoded 40 photos in {first:.3f} s; pinned all 40 again in {again:.4f} s")
    kib = info.stored_bytes >> 10
    print(f"{info.entries} thumbnails, {kib} KiB of pixels, backend {info.backend}")
    print(f"contact sheet: {folder / 'contact-sheet.png'}")
