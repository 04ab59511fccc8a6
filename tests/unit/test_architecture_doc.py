"""docs/architecture.md draws every room of the plugin, and every package says what it may import.

A room or a top-level module added without a line in the drawn tree, or a package whose
``__init__`` docstring does not say what it may import, fails here rather than leaving the
document behind the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PLUGIN = ROOT / "plugin" / "livediffusion"


def _drawn_tree() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    _, _, after = text.partition("```\nplugin/livediffusion/\n")
    assert after, "docs/architecture.md has no drawn tree of plugin/livediffusion/"
    return after.split("```", 1)[0]


def test_the_drawn_tree_has_a_line_for_every_room_and_top_level_module() -> None:
    tree = _drawn_tree()
    rooms = sorted(f"{p.name}/" for p in PLUGIN.iterdir() if (p / "__init__.py").is_file())
    modules = sorted(p.name for p in PLUGIN.glob("*.py") if p.name != "__init__.py")
    assert rooms == ["control/", "hosts/", "run/", "tools/"]  # a new room: draw it, then here
    for name in rooms:
        assert any(line.split()[0] == name for line in tree.splitlines() if line.strip()), name
    for name in modules:
        assert name in tree, f"{name} is not in docs/architecture.md's tree"


PACKAGES = [
    PLUGIN,
    *sorted(p for p in PLUGIN.iterdir() if (p / "__init__.py").is_file()),
    ROOT / "bridge" / "livediffusion_bridge",
    ROOT / "models" / "livediffusion_models",
]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_package_says_what_it_holds_and_what_it_may_import(package: Path) -> None:
    source = (package / "__init__.py").read_text(encoding="utf-8")
    docstring = ast.get_docstring(ast.parse(source)) or ""
    assert len(docstring.split("May import:")[0].split()) >= 10, "say what it holds first"
    assert "May import:" in docstring, f"{package.name}/__init__.py: no 'May import:'"
