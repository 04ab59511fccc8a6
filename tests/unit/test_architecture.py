"""The package rule and the plugin's rooms hold, and the check that says so can fail.

`lint-imports` (import-linter, configured in pyproject.toml) runs in ./run test; these tests run
it on the real tree and on a copy with one forbidden import added, so a contract that could
never fail (a typo in a module name, say) shows up here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is in the dev extra")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    paths = os.pathsep.join(str(tree / part) for part in ("plugin", "bridge", "models"))
    return subprocess.run(
        [str(LINT), "--no-cache"],
        check=False,
        cwd=tree,
        env={**os.environ, "PYTHONPATH": paths},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("tree")
    shutil.copy(ROOT / "pyproject.toml", tree)
    for part in ("plugin", "bridge", "models"):
        shutil.copytree(ROOT / part, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def test_the_real_tree_keeps_every_contract() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("bridge/livediffusion_bridge/frame.py", "import livediffusion_models", "bridge imports"),
        ("bridge/livediffusion_bridge/uri.py", "import livediffusion.config", "bridge imports"),
        ("models/livediffusion_models/step.py", "import livediffusion_bridge", "models import"),
        ("models/livediffusion_models/schedule.py", "import livediffusion.cli", "models import"),
        (
            "plugin/livediffusion/run/engine.py",
            "import livediffusion.tools.bench",
            "plugin's rooms",
        ),
        ("plugin/livediffusion/control/controls.py", "import livediffusion.run", "plugin's rooms"),
        ("plugin/livediffusion/run/slots.py", "import livediffusion.run.engine", "running server"),
        ("plugin/livediffusion/tools/measure.py", "import livediffusion.tools.soak", "the tools"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    copy: Path, module: str, line: str, contract: str
) -> None:
    path = copy / module
    original = path.read_text()
    path.write_text(
        original.replace(
            "from __future__ import annotations\n",
            f"from __future__ import annotations\n\n{line}  # noqa\n",
            1,
        )
    )
    try:
        result = lint(copy)
    finally:
        path.write_text(original)
    assert result.returncode == 1, result.stdout
    broken = [row for row in result.stdout.splitlines() if row.endswith("BROKEN")]
    assert (
        any(contract in row for row in broken)
        or contract in result.stdout.split("Broken contracts")[-1]
    ), result.stdout


def test_an_import_circle_breaks_the_acyclic_contract(copy: Path) -> None:
    a = copy / "models/livediffusion_models/schedule.py"
    original = a.read_text()
    a.write_text(
        original + "\nimport livediffusion_models.step  # noqa\n"
    )  # step imports schedule? no: make a loop
    b = copy / "models/livediffusion_models/step.py"
    original_b = b.read_text()
    b.write_text(original_b + "\nimport livediffusion_models.schedule  # noqa\n")  # and back
    try:
        result = lint(copy)
    finally:
        a.write_text(original)
        b.write_text(original_b)
    assert result.returncode == 1, result.stdout
    assert "no import circles" in result.stdout
