"""Every numeric flag of every command, and every STATESTREAM_* variable that fills one, is range-checked.

The flags are read off the parsers the commands really build (every ``Parser`` made while a
command prints its help), so a flag added tomorrow is covered without touching this file. A
value out of range is one line naming the flag and the range, with the usage exit code.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

import pytest

from service import cli, command, settings
from service.command import EXIT_USAGE, InRange, OneOf, Parser

COMMANDS = [c.name for c in cli.COMMANDS]


def parsers_built_by(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> list[Parser]:
    """Every Parser constructed while ``statestream ARGV --help`` runs (subcommands' included)."""
    built: list[Parser] = []
    original = Parser.__init__

    def record(self: Parser, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        built.append(self)

    with monkeypatch.context() as patch:
        patch.setattr(Parser, "__init__", record)
        with pytest.raises(SystemExit) as exited:
            cli.main([*argv, "--help"])
    assert exited.value.code == 0
    return built


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings]  # argparse has no public list of its actions


def written(value: float) -> str:
    """A number as the error line writes it: no ``.0``, no exponent."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def out_of_range(kind: InRange[Any]) -> str:
    """A value just past the range: above its top, or below its bottom when it has none."""
    return written(kind.high + 1 if kind.high is not None else kind.low - 1)


def range_text(kind: InRange[Any]) -> str:
    return f"{written(kind.low)} or more" if kind.high is None else f"{written(kind.low)}-{written(kind.high)}"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_numeric_flag_has_a_range(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    unchecked = [
        f"{parser.prog} {action.option_strings[-1]}"
        for parser in parsers_built_by([name], monkeypatch)
        for action in options(parser)
        if action.type in (int, float)
    ]
    assert unchecked == []


@pytest.mark.parametrize("name", COMMANDS)
def test_a_value_out_of_range_is_one_line_naming_the_flag_and_the_range(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    checked = 0
    for parser in parsers_built_by([name], monkeypatch):
        capsys.readouterr()
        for action in options(parser):
            if not isinstance(action.type, InRange):
                continue
            flag, value = action.option_strings[-1], out_of_range(action.type)
            with pytest.raises(SystemExit) as exited:
                cli.main([*parser.prog.split()[1:], flag, value])
            assert exited.value.code == EXIT_USAGE
            assert capsys.readouterr().err == (
                f"statestream: error: {flag}: {value} is out of range ({range_text(action.type)}); "
                f"see '{parser.prog} --help'\n"
            )
            checked += 1
    if name in ("serve", "client", "scenes"):
        assert checked  # these surely have numeric flags: the loop must have found them


def test_a_value_that_is_not_a_number_says_so() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="'ten' is not a whole number"):
        command.positive_int("ten")
    with pytest.raises(argparse.ArgumentTypeError, match="'nan' is not a finite number"):
        command.non_negative_float("nan")
    with pytest.raises(argparse.ArgumentTypeError, match="'inf' is not a finite number"):
        command.seconds("inf")


NUMERIC_SETTINGS = [f for f in fields(settings.Settings) if isinstance(f.metadata.get("type"), InRange)]


def test_every_numeric_setting_has_a_range() -> None:
    numeric = [f.name for f in fields(settings.Settings) if f.type in ("int", "float", "int | None", "float | None")]
    assert numeric == [f.name for f in NUMERIC_SETTINGS]


@pytest.mark.parametrize("field", NUMERIC_SETTINGS, ids=lambda f: f.name)
def test_a_variable_out_of_range_is_one_line_naming_it_and_the_range(
    field: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    variable, value = settings.ENV_PREFIX + field.name.upper(), out_of_range(field.metadata["type"])
    monkeypatch.setenv(variable, value)
    assert cli.main(["serve"]) == EXIT_USAGE
    assert capsys.readouterr().err == (
        f"statestream: error: {variable}={value!r}: {value} is out of range ({range_text(field.metadata['type'])}); "
        "see 'statestream serve --help'\n"
    )


@pytest.mark.parametrize("field", NUMERIC_SETTINGS, ids=lambda f: f.name)
def test_settings_built_in_code_are_held_to_the_same_range(field: Any) -> None:
    kind = field.metadata["type"]
    with pytest.raises(ValueError, match=rf"^{field.name}: .* is out of range \({range_text(kind)}\)$"):
        settings.Settings(**{field.name: kind.kind(out_of_range(kind))})


@pytest.mark.parametrize(
    ("workers", "message"),
    [("0", "0 is out of range (1-256, or 'auto')"), ("many", "'many' is neither a whole number nor 'auto'")],
)
def test_workers_takes_a_count_or_auto(
    workers: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serve", "--workers", workers])
    assert f"statestream: error: --workers: {message}; see" in capsys.readouterr().err
    monkeypatch.setenv("STATESTREAM_WORKERS", workers)
    assert cli.main(["serve"]) == EXIT_USAGE
    assert f"statestream: error: STATESTREAM_WORKERS='{workers}': {message}" in capsys.readouterr().err


CHOICE_SETTINGS = [f for f in fields(settings.Settings) if isinstance(f.metadata.get("type"), OneOf)]


def test_the_settings_with_a_fixed_set_of_values_are_checked_as_choices() -> None:
    assert [f.name for f in CHOICE_SETTINGS] == ["log_level", "scheduler", "provider", "state_memory", "event_loop"]


@pytest.mark.parametrize("field", CHOICE_SETTINGS, ids=lambda f: f.name)
def test_a_value_not_among_the_choices_is_one_line_naming_the_flag_the_variable_or_the_field(
    field: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    choices = ", ".join(field.metadata["type"].choices)
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", command.flag_of(field.name), "nope"])
    assert exited.value.code == EXIT_USAGE
    assert capsys.readouterr().err == (
        f"statestream: error: {command.flag_of(field.name)}: 'nope' is not one of {choices}; "
        "see 'statestream serve --help'\n"
    )
    variable = settings.ENV_PREFIX + field.name.upper()
    monkeypatch.setenv(variable, "nope")
    assert cli.main(["serve"]) == EXIT_USAGE
    assert capsys.readouterr().err.startswith(f"statestream: error: {variable}='nope': 'nope' is not one of {choices};")
    with pytest.raises(ValueError, match=rf"^{field.name}: 'nope' is not one of {choices}$"):
        settings.Settings(**{field.name: "nope"})


def test_the_log_level_is_taken_in_any_case() -> None:
    assert settings.parse(["--log-level", "debug"], {}).log_level == "debug"
    assert settings.parse([], {"STATESTREAM_LOG_LEVEL": "Warning"}).log_level == "Warning"
