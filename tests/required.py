"""Tools and libraries some tests need: missing, the test is skipped on a developer's machine, but
under ``CI=true`` the run fails, so that CI never goes green on tests it did not run."""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest


def missing(reason: str) -> NoReturn:
    """Skip the test for ``reason``; under ``CI=true``, fail it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a required tool missing fails the run)", pytrace=False)
    pytest.skip(reason)


def required_module(name: str) -> ModuleType:
    """``pytest.importorskip`` that fails under ``CI=true``."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(f"cannot import {name}: {exc}")
