"""Sphinx configuration: MyST Markdown pages, the Furo theme, the API from the docstrings."""

from __future__ import annotations

import sys
from pathlib import Path

import volcache

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "volcache"
author = "the volcache developers"
copyright = "2026, the volcache developers"
release = volcache.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "bench_tables",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"volcache {release}"

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# CacheInfo's fields, in three groups, rendered as Args are.
napoleon_custom_sections = [("Counts", "params_style"), ("Sizes", "params_style"),
                            ("Tier", "params_style")]  # fmt: skip
