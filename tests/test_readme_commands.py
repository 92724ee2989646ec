"""Issue 13, item 8: every `isopo-bench ...` command in the README is exercised, so a wrong example fails CI.

Commands are taken from the README itself (fenced bash lines starting with `isopo-bench`, `\\` continuations
joined, comments dropped, and inline `isopo-bench ...` code spans), so the test follows the README as it
is rewritten. How each is checked:
- `train` and `suite`: run for real with --dry-run (validates every setting, trains nothing);
- `list` and anything already ending in --help / --dry-run: run as written;
- every other subcommand (long jobs: warmstart, overhead, eval, dashboard, ...): its own argument parser
  parses the command line exactly as written, and the job stops there.
Placeholders (`<that folder>`, `/path/to/model`) stand for a model folder and are replaced by one.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from pathlib import Path

import pytest

from isopo_bench import cli

README = Path(__file__).resolve().parents[1] / "README.md"
PLACEHOLDER = re.compile(r"<[^<>]+>|/path/to/\S+")


def readme_commands(text: str) -> list[str]:
    commands = []
    for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith("isopo-bench "):
                commands.append(line)
    for span in re.findall(r"`(isopo-bench [^`\n]+)`", text):
        commands.append(span)
    return list(dict.fromkeys(_strip_comment(c) for c in commands))


def _strip_comment(command: str) -> str:
    return re.sub(r"\s+#.*$", "", command).strip()


COMMANDS = readme_commands(README.read_text())


def test_the_readme_has_commands_of_each_kind():
    subcommands = {c.split()[1] for c in COMMANDS if len(c.split()) > 1}
    assert {"train", "suite", "list", "leaderboard", "dashboard", "eval"} <= subcommands, subcommands
    assert any("--dry-run" in c for c in COMMANDS) and any("--help" in c for c in COMMANDS)


class Parsed(Exception):
    """Raised by the patched parsers once the command line parsed."""


@pytest.fixture
def model_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command(command, model_folder, workdir, monkeypatch, capsys):
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # a suite dry run sets them; restored after the test
        monkeypatch.setenv(key, "1")
    argv = shlex.split(PLACEHOLDER.sub(str(model_folder), command))[1:]
    sub = argv[0] if argv else ""
    as_written = sub == "list" or "--help" in argv or "--dry-run" in argv
    if sub in ("train", "suite") and not as_written:
        argv.append("--dry-run")
    elif not as_written:
        _parse_only(monkeypatch)
    try:
        rc = cli.main(argv)
    except Parsed:
        rc = 0
    except SystemExit as exc:  # argparse: usage error (2) or --help (0)
        rc = exc.code
    out = capsys.readouterr()
    gsm8k = Path(os.environ.get("ISOPO_BENCH_GSM8K_DIR", ""))
    if rc != 0 and "`task.data_dir`" in out.err and not (gsm8k / "train.jsonl").is_file():
        pytest.skip(f"needs GSM8K data (set ISOPO_BENCH_GSM8K_DIR): {command}")
    assert rc == 0, f"README command `{command}` failed (exit {rc}):\n{out.err[-3000:]}"
    assert "Traceback" not in out.out + out.err


def _parse_only(monkeypatch) -> None:
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    import tyro

    original_cli = tyro.cli

    def tyro_cli(*args, **kwargs):
        original_cli(*args, **kwargs)
        raise Parsed

    monkeypatch.setattr(tyro, "cli", tyro_cli)
