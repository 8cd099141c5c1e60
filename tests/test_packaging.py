"""The wheel's metadata keeps what the README promises (read from pyproject.toml: nothing is built here).

Building a wheel needs the build backend from the package index, so these tests read pyproject.toml and
apply its package patterns the way setuptools' finder does: every directory holding an `__init__.py`
whose dotted name matches an `include` pattern is a package of the wheel.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return dict(pyproject)


def test_the_wheel_holds_the_streamq_package_and_no_test_tooling(project: dict[str, Any]) -> None:
    """chaos/, benchmarks/ and tests/ sit beside the package in the checkout but stay out of the wheel."""
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    candidates = [
        ".".join(init.parent.relative_to(REPO_ROOT).parts)
        for top in REPO_ROOT.iterdir()
        if top.is_dir() and not top.name.startswith(".")
        for init in top.rglob("__init__.py")
    ]
    assert "chaos" in candidates  # the harness is there to be left out
    packages = [name for name in candidates if any(fnmatch.fnmatchcase(name, p) for p in include)]
    assert "streamq" in packages
    assert all(name == "streamq" or name.startswith("streamq.") for name in packages), packages
    assert not (REPO_ROOT / "streamq" / "tls_certificates.py").exists()


def test_the_license_file_matches_the_license_metadata(project: dict[str, Any]) -> None:
    assert project["project"]["license"] == "MIT"
    assert project["project"]["license-files"] == ["LICENSE"]
    text = (REPO_ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the streamq authors" in text


def test_redis_py_is_bounded_above_and_the_installed_release_is_within_the_bounds(
    project: dict[str, Any],
) -> None:
    """streamq/_wire/transport.py uses redis-py internals, so a new major release must not be picked up
    unchecked."""
    (redis,) = [Requirement(r) for r in project["project"]["dependencies"] if r.startswith("redis")]
    assert any(spec.operator == "<" for spec in redis.specifier), redis
    assert redis.specifier.contains(importlib.metadata.version("redis")), redis


def test_no_extra_promises_what_an_installed_user_cannot_run(project: dict[str, Any]) -> None:
    """benchmarks/ is not in the wheel: its requirements live beside it, not in a published extra."""
    assert "bench" not in project["project"]["optional-dependencies"]
    assert (REPO_ROOT / "benchmarks" / "requirements.txt").exists()


def test_the_image_build_copies_every_file_the_package_build_reads(project: dict[str, Any]) -> None:
    needed = {"pyproject.toml", project["project"]["readme"], *project["project"]["license-files"]}
    dockerfile = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    copied = {
        source
        for line in dockerfile.splitlines()
        if (match := re.match(r"COPY\s+(.+)\s+\S+$", line.strip()))
        for source in match.group(1).split()
    }
    assert needed <= copied, needed - copied
