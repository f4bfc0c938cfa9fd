"""The C core is used only where it was built from the sources beside it."""

from __future__ import annotations

import pytest

from volcache import coremodule

from .conftest import require


def test_a_build_older_than_its_sources_is_not_used(tmp_path, monkeypatch):
    require("kernel", None if coremodule.core is not None else coremodule.WHY)
    for name in ("module.c", "pycore.h"):
        (tmp_path / name).write_text("/* edited since the build */")
    monkeypatch.setattr(coremodule, "SOURCES", tmp_path)
    with pytest.warns(RuntimeWarning, match="older than its sources"):
        module, why = coremodule._load()
    assert module is None and why is not None and "older than its sources" in why


def test_a_folder_named_core_that_is_not_ours_is_not_taken_for_the_sources(tmp_path, monkeypatch):
    require("kernel", None if coremodule.core is not None else coremodule.WHY)
    (tmp_path / "__init__.py").write_text("# another project's package called core\n")
    (tmp_path / "thing.c").write_text("int thing;\n")
    monkeypatch.setattr(coremodule, "SOURCES", tmp_path)
    module, why = coremodule._load()
    assert module is not None and why is None


def test_a_missing_build_says_why(monkeypatch):
    monkeypatch.setenv("VOLCACHE_CORE_MODULE", "volcache_no_such_module")
    module, why = coremodule._load()
    assert module is None and why is not None and "volcache_no_such_module was not built" in why


def test_the_source_hash_follows_every_source(tmp_path):
    (tmp_path / "a.c").write_text("int a;")
    first = coremodule.source_hash(tmp_path)
    (tmp_path / "a.h").write_text("int b;")
    assert coremodule.source_hash(tmp_path) != first


def test_volcache_core_python_chooses_the_python_versions(monkeypatch):
    monkeypatch.setenv("VOLCACHE_CORE", "python")
    assert coremodule._load() == (None, "VOLCACHE_CORE=python chose the Python versions")
    monkeypatch.setenv("VOLCACHE_CORE", "fast")
    with pytest.raises(ImportError, match="VOLCACHE_CORE must be"):
        coremodule._load()
