"""The shared argparse types: every numeric flag of every script is finite and in range, or exit 2 in one line.

    python -m pytest tests/test_cli.py -q
"""
import argparse
import importlib.util
from pathlib import Path

import pytest

import data as data_script
import test as test_script
import train
from utils import cli
from utils.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


def _throughput():
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("func, good, bad", [
    (cli.finite_float, {"0": 0.0, "-2.5": -2.5, "1e-6": 1e-6}, ["nan", "inf", "-inf", "NaN", "1e400", "x", ""]),
    (cli.positive_float, {"0.5": 0.5, "3": 3.0}, ["0", "-1", "nan", "inf"]),
    (cli.non_negative_float, {"0": 0.0, "1e-4": 1e-4}, ["-1", "-1e-9", "nan", "inf"]),
    (cli.fraction, {"1": 1.0, "0.25": 0.25}, ["0", "1.01", "-0.5", "nan", "inf"]),
    (cli.probability, {"0": 0.0, "1": 1.0}, ["-0.1", "1.5", "nan"]),
    (cli.momentum, {"0": 0.0, "0.9": 0.9}, ["1", "-0.5", "nan", "inf"]),
    (cli.positive_int, {"1": 1, "512": 512}, ["0", "-1", "1.5", "nan"]),
    (cli.non_negative_int, {"0": 0, "7": 7}, ["-1", "inf"]),
    (cli.seed, {"0": 0, str(2**32 - 1): 2**32 - 1}, ["-5", str(2**32), "99999999999999999999", "1.0"]),
    (cli.image_size, {"8": 8, "1024": 1024, "224": 224}, ["7", "1025", "100000", "nan"]),
    (cli.thread_count, {"1": 1, "2": 2, "1024": 1024}, ["0", "-1", "1025", "100000", "1.5", "nan", "inf"]),
])
def test_types_accept_their_range_and_refuse_the_rest(func, good, bad):
    for text, value in good.items():
        assert func(text) == value and type(func(text)) is type(value)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            func(text)


def test_parser_errors_are_one_line(capsys):
    p = cli.ArgumentParser(prog="x.py")
    p.add_argument("--lr", type=cli.positive_float, default=0.1)
    with pytest.raises(SystemExit) as info:
        p.parse_args(["--lr", "nan"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err == "x.py: error: argument --lr: expected a finite number, got 'nan'\n"


class _Grabbed(Exception):
    pass


def _parser(monkeypatch, parse_args, argv) -> argparse.ArgumentParser:
    """The parser a script's parse_args builds (caught as it starts parsing)."""
    grabbed = {}

    def grab(self, args=None, namespace=None):
        grabbed["parser"] = self
        raise _Grabbed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", grab)
    with pytest.raises(_Grabbed):
        parse_args(argv)
    monkeypatch.undo()
    return grabbed["parser"]


# Flags still typed int/float whose range check_args makes NaN-safe, kept for the one-line messages
# tests/test_errors.py pins ("--data_scale must be in (0, 1]", "--batch_size must be > 0").
CHECKED_AFTER_PARSING = {"train": {"--data_scale", "--batch_size"}}
SCRIPTS = {"train": (train.parse_args, []), "test": (test_script.parse_args, ["--model_path", "x.pth", "--solver", "lbfgs"]),  # lbfgs checks --l2
           "data": (data_script.parse_args, []), "throughput": (None, [])}


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_every_numeric_flag_refuses_nan_inf_and_out_of_range(script, monkeypatch, capsys):
    parse_args, base = SCRIPTS[script]
    if parse_args is None:
        parse_args = _throughput().parse_args
    parser = _parser(monkeypatch, parse_args, base)
    assert isinstance(parser, cli.ArgumentParser)
    numeric = [a for a in parser._actions if a.option_strings and a.type not in (None, str, cli.str2bool)]
    for action in numeric:
        flag = action.option_strings[0]
        if action.type in (int, float) and not action.choices:  # choices= bounds it as well
            assert flag in CHECKED_AFTER_PARSING.get(script, set()), f"{script}.py {flag} has a bare {action.type}"
        values = ["nan", "inf", "-inf", "-1e30", "1e30"]
        if action.choices:
            continue
        for value in values:
            try:
                parse_args(base + [f"{flag}={value}"])  # "=": a leading "-" is then no option
            except SystemExit as exc:
                assert exc.code == 2
                err = capsys.readouterr().err
                assert err.count("\n") == 1 and f"error: argument {flag}" in err, err
            except UserError as exc:
                assert flag in str(exc)
            else:
                # a huge value can be in range (e.g. --epochs 1e30 is no integer; --batch_size 1e30 neither)
                assert value in ("1e30",) and action.type in (cli.finite_float, cli.non_negative_float,
                                                            cli.positive_float), (script, flag, value)
