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
READ_FIRST = ["train.py", "test.py", "utils/eval/probe.py"]


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


def _utils_imports(path: Path) -> set[str]:
    """The utils modules a file imports ("utils.x.y"; `from utils.x import y` counts as both)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "utils"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "utils":
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ("data", "train", "eval", "methods") else "shared"


# Which groups of utils/ each group may import: the shared modules at the top are the floor
# (augment, schedule and recipes among them: both pretraining and evaluation read them),
# data/ and train/ stand side by side on it, eval/ reads data/ but never train/; methods/ (what train.py trains)
# sits on train/ (NT-Xent) and nothing below it reads it. sweep.py (the study) is not a floor module.
MAY_IMPORT = {"shared": {"shared"}, "data": {"shared", "data"}, "train": {"shared", "train"},
              "eval": {"shared", "data", "eval"}, "methods": {"shared", "train", "methods"}}


def test_utils_subpackages_import_downward_only():
    checked = 0
    for path in (ROOT / "utils").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if module == "utils.sweep":
            continue
        layers = {_layer(m) for m in _utils_imports(path)}
        assert layers <= MAY_IMPORT[_layer(module)], (module, sorted(_utils_imports(path)))
        checked += 1
    assert checked > 25
    # and the check sees an import across groups where there is one: the probe's, were it in data/
    probe_layers = {_layer(m) for m in _utils_imports(ROOT / "utils" / "eval" / "probe.py")}
    assert probe_layers - MAY_IMPORT["data"] == {"eval"}


def test_the_lowest_layers_never_reach_up_into_the_study():
    """Dataset sizes live with the datasets (utils/data/registry.py): utils/data/ (splits.py among them) and train.py
    read them there, never from utils/sweep.py (the study), at import time or at call time."""
    paths = [*sorted((ROOT / "utils" / "data").rglob("*.py")), ROOT / "train.py"]
    for path in paths:
        assert "utils.sweep" not in _utils_imports(path), path
    # the check sees such an import where there is one: simclr_train.py (the study's launcher) has it
    assert "utils.sweep" in _utils_imports(ROOT / "simclr_train.py")
