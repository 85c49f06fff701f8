"""The domain's rule as an allow-list: it imports the standard library and itself, nothing else.

(import-linter's contracts forbid named modules; a new outside library would pass them unnoticed.)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

DOMAIN = Path(__file__).resolve().parents[2] / "ioc" / "domain"


def imported(path: Path) -> list[str]:
    """The top-level names of the modules `path` imports: '.' from within its package, '..' from above it."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            level = {0: (node.module or "").split(".")[0], 1: "."}
            names.append(level.get(node.level, ".."))  # '..': from outside the package
    return names


@pytest.mark.parametrize("path", sorted(DOMAIN.glob("*.py")), ids=lambda path: path.name)
def test_the_domain_imports_only_the_standard_library_and_itself(path):
    allowed = set(sys.stdlib_module_names) | {"__future__", "."}
    outside = [name for name in imported(path) if name not in allowed]
    assert not outside, f"{path.name} imports {outside}: the domain takes the standard library only"


def test_the_check_sees_an_outside_import(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("import aioca\nfrom ..settings import schema\nfrom . import errors\nimport json\n")
    assert imported(planted) == ["aioca", "..", ".", "json"]
