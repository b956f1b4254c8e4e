"""``--help`` reads like the best Typer tools: choices, flags, named arguments, panels, defaults once.

The command (in this process, through Typer's test runner) prints its help
under a fixed terminal (120 columns, no colour), so the layout does not depend
on the machine running the tests.
"""

from __future__ import annotations

import re

import pytest

from segsoft.limits import CHOICES
from segsoft.outputs import PROBABILITY_DTYPES, PROBABILITY_FORMATS

COMMANDS = ("run", "batch", "apply", "evaluate")
ARGUMENTS = {"run": "IMAGE", "batch": "INPUT...", "apply": "MODEL.json INPUT...", "evaluate": "PRED_OR_IMAGE_DIR"}


ENV = {"COLUMNS": "120", "LINES": "50", "TERM": "dumb", "NO_COLOR": "1"}


def _segsoft(*args: str, **env: str):
    """The command in this process (the help needs no subprocess): its exit code and output."""
    from typer.testing import CliRunner

    from segsoft.cli import app

    return CliRunner().invoke(app, list(args), env={**ENV, **env}, prog_name="segsoft")


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """Each command's help, and the top level's under ""."""
    out = {}
    for name in ("", *COMMANDS):
        result = _segsoft(*([name] if name else []), "--help")
        assert result.exit_code == 0, result.output
        out[name] = result.output
    return out


def _entries(text: str) -> dict[str, str]:
    """Each option's row in the panels, continuation lines included, keyed by its first flag."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        inner = line.strip().strip("│").strip()
        # a row starts at the panel's edge (after the required column's "*"); its help wraps far right
        start = re.match(r"\s*│ {1,4}(?:\* +)?(--?[\w-]+)", line)
        if start:
            current = start.group(1)
            assert current not in entries, f"{current} listed twice"
            entries[current] = inner
        elif current and line.lstrip().startswith("│") and inner:
            entries[current] += " " + inner
        else:
            current = None
    return entries


@pytest.mark.parametrize("command", COMMANDS)
def test_usage_names_the_arguments(helps, command):
    usage = next(line for line in helps[command].splitlines() if "Usage:" in line)
    assert usage.strip() == f"Usage: segsoft {command} [OPTIONS] {ARGUMENTS[command]}"
    assert "{" not in helps[command] and "}" not in helps[command]


@pytest.mark.parametrize("command", ("", *COMMANDS))
def test_flags_are_shown_as_flags(helps, command):
    text = helps[command]
    assert "<bool>" not in text and "BOOLEAN" not in text
    entries = _entries(text)
    assert entries["--help"].split() == ["--help", "Show", "this", "message", "and", "exit."]
    if command:
        assert re.match(r"--quiet\s+-q\s+[A-Z]", entries["--quiet"]), entries["--quiet"]


def test_choices_come_from_the_settings_table(helps):
    entries = _entries(helps["run"])
    tables = {
        "--color": CHOICES["color"],
        "--model": CHOICES["model"],
        "--covariance": CHOICES["covariance"],
        "--criterion": CHOICES["criterion"],
        "--palette": CHOICES["palette"],
        "--probabilities": PROBABILITY_FORMATS,
        "--probabilities-dtype": PROBABILITY_DTYPES,
    }
    for flag, names in tables.items():
        assert f"[{'|'.join(names)}]" in entries[flag], entries[flag]
    assert "[lab|rgb|hsv|gray|bands]" in entries["--color"]
    assert "<str>" not in helps["run"]  # every value says what it looks like
    assert "<int|auto>" in entries["--k"] and "<low..high>" in entries["--k-range"]
    assert "[categorical|mean]" in _entries(helps["apply"])["--palette"]


@pytest.mark.parametrize(
    ("command", "panels"),
    [
        ("run", ("Arguments", "Options", "Model", "Fitting", "Pictures", "Input", "Output", "Performance")),
        ("batch", ("Arguments", "Options", "Model", "Fitting", "Pictures", "Input", "Output", "Performance")),
        ("apply", ("Arguments", "Options", "Pictures", "Input", "Output", "Performance")),
        ("evaluate", ("Arguments", "Options", "Model", "Fitting", "Pictures", "Input", "Output", "Scoring")),
    ],
)
def test_options_are_grouped_into_panels(helps, command, panels):
    found = re.findall(r"╭─ (\w+) ─", helps[command])
    assert found[: len(panels)] == list(panels), found
    where = {}
    panel = None
    for line in helps[command].splitlines():
        title = re.match(r"\s*╭─ (\w+) ─", line)
        if title:
            panel = title.group(1)
            continue
        flag = re.match(r"\s*│ {1,4}(?:\* +)?(--[\w-]+)", line)
        if flag:
            where[flag.group(1)] = panel
    expected = {
        "--k": "Model",
        "--model": "Model",
        "--max-iter": "Fitting",
        "--seed": "Fitting",
        "--regions": "Pictures",
        "--output": "Output",
        "--jobs": "Performance",
        "--scheduler": "Performance",
        "--gt": "Scoring",
        "--csv": "Output",
    }
    for flag, name in expected.items():
        if flag in where:
            assert where[flag] == name, (flag, where[flag])
    assert where["--help"] == "Options"


@pytest.mark.parametrize("command", COMMANDS)
def test_each_default_is_shown_once(helps, command):
    for entry in _entries(helps[command]).values():
        assert len(re.findall(r"default", entry, flags=re.IGNORECASE)) <= 1, entry
    entries = _entries(helps[command])
    if "--max-iter" in entries:
        assert "[default: 100]" in entries["--max-iter"]


def test_help_text_keeps_its_brackets(helps):
    # rich markup would eat "[dask]" from "pip install 'segsoft[dask]'"
    assert "'segsoft[dask]'" in " ".join(_entries(helps["batch"])["--scheduler"].split())


def test_top_level_lists_the_commands_and_completion(helps):
    text = helps[""]
    assert "Usage: segsoft [OPTIONS] COMMAND [ARGS]..." in text
    for command in COMMANDS:
        assert re.search(rf"│ {command}\s+\S", text), command
    assert "--install-completion" in text and "--version" in text


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("segsoft run x.png --color ", ["lab", "rgb", "hsv", "gray", "bands"]),
        ("segsoft batch x --model s", ["soft-kmeans"]),
        ("segsoft batch x --model S", ["Soft-kmeans"]),  # case-insensitive, as the values are read
        ("segsoft apply m.json x --probabilities-dtype f", ["float32", "float16"]),
    ],
)
def test_choices_are_completed(words, expected):
    result = _segsoft(_SEGSOFT_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=str(len(words.split(" ")) - 1))
    assert result.exit_code == 0, result.output
    assert result.output.split() == expected
