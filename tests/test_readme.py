"""The README's family table lists exactly the registered families (issue #15: "its family table lists only
what exists"), so a family added to or removed from the registry cannot leave the table behind."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def family_table() -> set[str]:
    text = README.read_text()
    section = text.split("## Families", 1)[1].split("\n## ", 1)[0]
    return {m.group(1) for m in re.finditer(r"^\| `([\w-]+)` \|", section, re.M)}


def test_family_table_lists_the_registered_families():
    import zoo
    from zoo.registry import get_entry

    registered = {get_entry(n).family for n in zoo.list_models()}
    assert family_table() == registered
