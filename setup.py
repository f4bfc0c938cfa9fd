"""Only what pyproject.toml cannot say: the cffi extension."""

from setuptools import setup

setup(cffi_modules=["backends/native/build.py:ffibuilder"])
