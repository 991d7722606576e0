"""The scripts a newcomer reads first stay readable: no function longer than a screen.

(That models/ imports nothing from utils/ is checked in tests/test_load_backbone.py.)

Run with `python -m pytest tests/test_layout.py -q`.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 80  # about one screen, the def line to the function's last line
READ_FIRST = ["train.py", "test.py", "utils/probe.py"]


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """(name, lines) of every function or method, nested ones included, longer than `limit` lines."""
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > limit]


@pytest.mark.parametrize("path", READ_FIRST)
def test_no_function_is_longer_than_a_screen(path):
    assert long_functions((ROOT / path).read_text()) == []


def test_the_check_counts_from_def_to_the_last_line():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES - 1))
    fits = f"def fits():\n{body}"  # MAX_LINES lines in all
    assert long_functions(fits) == []
    assert long_functions(fits + "    return x0\n") == [("fits", MAX_LINES + 1)]
    nested = "class A:\n    def m(self):\n" + "".join(f"        y{i} = {i}\n" for i in range(MAX_LINES))
    assert long_functions(nested) == [("m", MAX_LINES + 1)]
