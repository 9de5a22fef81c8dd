"""The ``aigw`` command line: help is help (exit 0) at every level, usage errors exit 2."""

from __future__ import annotations

import pytest

from aigw_common.cli import main


def run(argv: list[str]) -> int | str | None:
    """The exit status, whether ``main`` returns it or argparse raises it."""
    try:
        return main(argv, env={})
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["admin", "--help"], ["admin", "-h"],
                                  ["admin", "users", "--help"], ["admin", "budgets", "-h"], ["dev", "--help"]])
def test_help_exits_zero(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: aigw")
    if argv == ["admin", "--help"]:
        assert "providers" in out and "budgets" in out


@pytest.mark.parametrize("argv", [["admin"], ["admin", "nope"], ["nope"], []])
def test_usage_errors_exit_two(argv: list[str]) -> None:
    assert run(argv) == 2
