"""docs/design.md is the contract the code cites ("docs/design.md §N"): every citation names a section that
exists, and no file points at a design document outside the repository."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = [p for d in ("pipeline", "trainer", "scripts", "tests", "manifests") for p in (ROOT / d).rglob("*")
         if p.suffix in (".py", ".yaml", ".sh") and p.is_file()] + [ROOT / "README.md"]


def test_every_design_citation_names_an_existing_section():
    sections = {m.group(1) for m in re.finditer(r"^## (\d+)\.", (ROOT / "docs" / "design.md").read_text(), re.M)}
    assert {str(i) for i in range(1, 12)} <= sections
    cited = []
    for p in FILES:
        for m in re.finditer(r"design\.md §(\d+)(?:\.(\d+))?((?:, §\d+)*)", p.read_text(errors="replace")):
            cited += [(p.name, m.group(1))] + [(p.name, n) for n in re.findall(r"§(\d+)", m.group(3) or "")]
    assert len(cited) >= 15
    missing = [(f, n) for f, n in cited if n not in sections]
    assert not missing, missing


def test_no_file_cites_a_design_document_outside_the_repository():
    bad = [p.name for p in FILES if p.name != "test_design_doc.py"
           and re.search(r"DESIGN §|method-reference|dataset-formats|platform-notes|/work/notes", p.read_text(
               errors="replace"))]
    assert not bad, bad
