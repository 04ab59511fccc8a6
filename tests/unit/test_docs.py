"""The generated tables in the docs are the code's: a change to either without the other fails."""

from __future__ import annotations

import re
from pathlib import Path

from livediffusion.controls import format_address_table
from livediffusion.options import options_table

ROOT = Path(__file__).resolve().parents[2]


def _between(text: str, name: str) -> str:
    match = re.search(rf"<!-- {name}:start[^>]*-->\n(.*?)\n<!-- {name}:end -->", text, re.S)
    assert match, f"no {name} markers"
    return match.group(1)


def test_readme_osc_table_is_generated_from_the_server_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert _between(readme, "osc-table") == format_address_table(markdown=True)


def test_configuration_page_lists_every_setting() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert _between(page, "options-table") == options_table()
