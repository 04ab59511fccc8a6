"""pyproject.toml as the build backend reads it: installing prints no deprecation banner."""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"

# setuptools 77 is the first release that reads project.license as an SPDX string (PEP 639)
# and the one that started warning about the table form.
SPDX_LICENSE_SINCE = (77, 0)


def test_the_build_requires_a_setuptools_that_reads_an_spdx_license() -> None:
    document = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    assert isinstance(document["project"]["license"], str), "use the SPDX string form"
    (requirement,) = [
        item for item in document["build-system"]["requires"] if item.startswith("setuptools")
    ]
    match = re.fullmatch(r"setuptools>=(\d+)(?:\.(\d+))?.*", requirement.replace(" ", ""))
    assert match, requirement
    minimum = (int(match.group(1)), int(match.group(2) or 0))
    assert minimum >= SPDX_LICENSE_SINCE, requirement


def test_setuptools_reads_the_metadata_without_a_warning() -> None:
    """What pip runs at install time, through the real setuptools: with the old table form
    this warns ``project.license as a TOML table is deprecated`` (pip prints it twice)."""
    setuptools = pytest.importorskip("setuptools")
    version = tuple(int(part) for part in setuptools.__version__.split(".")[:2])
    if version < SPDX_LICENSE_SINCE:
        pytest.skip(f"setuptools {setuptools.__version__} predates the SPDX form")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), str(PYPROJECT))
    problems = [str(item.message) for item in caught if "license" in str(item.message).lower()]
    assert problems == []
    assert dist.metadata.license_expression == "MIT"
