"""benchmarks/tables.py: every generated table of README.md and docs/ matches the committed results file it is
drawn from; a digit changed by hand is caught (exit 1, the table named) and a rewrite restores it."""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("tables", ROOT / "benchmarks" / "tables.py")
tables = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(tables)


def test_every_generated_table_matches_its_results_file(capsys):
    assert tables.main(["--check"]) == 0
    assert "0 stale" in capsys.readouterr().out
    names = {m["name"] for path in tables.markdown_files() for m in tables.BLOCK.finditer(path.read_text())}
    assert {"digits", "digits-verdicts", "fashion"} <= {n for n in names if not n.startswith("records/")} \
        <= set(tables.TABLES)


def test_a_digit_typed_into_a_table_is_caught_and_a_rewrite_restores_it(tmp_path):
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    original = (tmp_path / "README.md").read_text()
    block = next(m for m in tables.BLOCK.finditer(original) if m["name"] == "fashion")
    body = block["body"]
    typed = re.sub(r"(\d)\.(\d)(\d)", lambda m: f"{m[1]}.{m[2]}{(int(m[3]) + 1) % 10}", body, count=1)  # one digit
    assert typed != body and len(typed) == len(body)
    (tmp_path / "README.md").write_text(original.replace(body, typed))
    check = [sys.executable, str(ROOT / "benchmarks" / "tables.py"), "--check", "--root", str(tmp_path)]
    out = subprocess.run(check, capture_output=True, text=True)
    assert out.returncode == 1 and "README.md: fashion" in out.stdout and "fashion-verdicts" not in out.stdout
    rewrite = subprocess.run(check[:-3] + ["--root", str(tmp_path)], capture_output=True, text=True)
    assert rewrite.returncode == 0 and (tmp_path / "README.md").read_text() == original
    assert subprocess.run(check, capture_output=True, text=True).returncode == 0


def test_an_unknown_table_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "README.md").write_text("<!-- table: nosuch -->\n| a |\n<!-- /table -->\n")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tables.py"), "--check", "--root", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "unknown table 'nosuch'" in out.stderr


@pytest.mark.parametrize("name", sorted(tables.TABLES))
def test_every_table_renders_a_header_a_rule_and_rows(name):
    lines = tables.TABLES[name]()
    assert lines[0].startswith("| ") and set(lines[1]) <= set("|-") and len(lines) > 2
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_a_record_renders_its_header_and_rows_verbatim_and_its_source_lines_not(tmp_path, monkeypatch):
    (tmp_path / "r.csv").write_text("# made on 2026-12-07\nbackbone,\"acc, all (%)\"\nrandom,**86.09**\nSimCLR,86.44\n")
    assert tables.record_table(tmp_path / "r.csv") == [
        "| backbone | acc, all (%) |", "|---|---|", "| random | **86.09** |", "| SimCLR | 86.44 |"]
    (tmp_path / "bad.csv").write_text("a,b\n1\n")
    with pytest.raises(tables.UserError, match="as many fields"):
        tables.record_table(tmp_path / "bad.csv")
