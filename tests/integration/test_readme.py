"""Every command README.md shows is executed here, or where it cannot run in a test (Docker, a GPU, minutes of
campaign, the network) checked as far as it can be: the `lem` subcommand exists, every option it names (in its
comment too) is one `lem ... --help` lists, typer parses the line with its placeholders filled in, every repo path
it names exists, `make` targets and variables are the Makefile's, entry points are installed, compose profiles and
services are compose.yaml's. The README's campaign YAML and the campaign files it names are validated. Renaming an
option, a subcommand, a target or a file the README names fails this file."""

from __future__ import annotations

import functools
import itertools
import re
import shlex
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.exceptions import TyperException
from typer.testing import CliRunner

from lem_planner.cli import cli

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
BIN = Path(sys.executable).parent

# Not run here (only checked as above), each with the reason. A key is the start of a command as written; one
# that no README command starts with any more fails the test, so the list cannot outlive its commands.
NOT_RUN = {
    "make campaign": "builds .venv, starts the services and runs a campaign for minutes (test_campaign.py runs one)",
    "make test": "the test suite itself",
    "make up": "starts background services, or Docker (absent here); test_flower.py runs scripts/services.sh",
    "make beat": "a beat in the foreground until killed (test_schedules.py runs lem-beat)",
    "docker": "no Docker engine on this project's machines (make lint-containers checks compose.yaml)",
    "cp .env.example": "writes .env in the checkout",
    "python3": "pip and the bundle's unpack.py act on a GPU host (test_bundle.py runs unpack.py)",
    "export": "sets a variable of the GPU host's shell",
    "lem campaign run": "dispatches a real campaign (test_campaign.py, test_cli_json.py)",
    "lem schedule": "writes schedules a beat would fire, except `schedule list` (test_schedules.py, test_cli_json.py)",
    "lem params discover": "pytorch takes 20 s and the others need an engine wheel (test_params_discover.py)",
    "lem bundle": "needs a package index, or a bundle built by one (test_bundle.py)",
}
RUN_ANYWAY = ("lem schedule list",)  # run although a NOT_RUN key covers them

# Values for the README's placeholders: parsing needs a value of the right type; runs get real ones.
PLACEHOLDERS = {
    "FILE": "configs/campaigns/default.yaml",
    "FILE.csv": "{tmp}/runs.csv",
    "FILE.parquet": "{tmp}/runs.parquet",
    "FILE.json": "{tmp}/runs.json",
    "report.html": "{tmp}/report.html",
    "DIR": "{legacy}",
    "T.jsonl": "tests/data/h200/h200_nvml_trace.jsonl",
    "W.jsonl": "tests/data/h200/h200_nvml_windows.jsonl",
    "ID": "{id}",
    "CAMPAIGN_ID": "{id}",
    "A": "{id}",
    "B": "{id}",
    "N": "200",
    "S": "0",
    "F": "csv",
    "BACKEND": "pytorch",
    "ISO-TIME": "2099-01-01T00:00",
}
EXIT_STATUS = {"lem results import": 1, "lem doctor": None}  # the fixture holds bad files; no workers run here


@dataclass(frozen=True)
class Command:
    line: int
    text: str  # without its comment
    comment: str
    inline: bool  # a `code span` in prose: may leave arguments out (`lem campaign plan --json`)

    def words(self) -> list[str]:
        return shlex.split(self.text)

    def starts_with(self, prefix: str) -> bool:
        return self.words()[: len(prefix.split())] == prefix.split()


def _split_comment(line: str) -> tuple[str, str]:
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def _code_blocks() -> Iterator[tuple[str, list[tuple[int, str]]]]:
    """(language, [(line number, text)]) of each fenced block, and of each 4-space-indented one ('')."""
    lines = README.read_text().splitlines()
    fence, block, indented = None, [], []
    for number, line in enumerate(lines, 1):
        if fence is not None:
            if line.startswith("```"):
                yield fence, block
                fence, block = None, []
            else:
                block.append((number, line))
        elif line.startswith("```"):
            fence = line[3:].strip()
        elif line.startswith("    ") and (indented or not lines[number - 2].strip()):
            indented.append((number, line[4:]))
        elif indented:
            yield "", indented
            indented = []


def readme_commands() -> list[Command]:
    commands: list[Command] = []
    for language, block in _code_blocks():
        if language not in ("", "sh", "bash", "console"):
            continue
        pending = ""
        for number, raw in block:
            text, comment = _split_comment(raw)
            if not text.strip():
                if comment and raw[:1].isspace() and commands:  # the comment above, continued
                    last = commands.pop()
                    commands.append(Command(last.line, last.text, last.comment + " " + comment, False))
                continue
            if pending:
                text = pending + " " + text.strip()
            elif raw[:1].isspace() and text.lstrip().startswith(("[", "-")) and commands:
                last = commands.pop()  # a continuation line: more options of the command above
                commands.append(Command(last.line, last.text + " " + text.strip(), last.comment, False))
                continue
            if text.endswith("\\"):
                pending = text[:-1].rstrip()
                continue
            pending = ""
            commands.append(Command(number, text.strip(), comment, False))
    prose = "\n".join(line if not inside else "" for line, inside in _prose_mask())
    for match in re.finditer(r"`([^`]+)`", prose):
        span = " ".join(match.group(1).split()).removesuffix(" ...")
        head = re.sub(r"^([A-Z_]+=\S* )+", "", span)
        if " " in head and head.startswith(("lem", "make ", "docker compose run", ".venv/bin/python ", "python3 ")):
            commands.append(Command(prose.count("\n", 0, match.start()) + 1, span, "", True))
    return commands


def _prose_mask() -> Iterator[tuple[str, bool]]:
    """Each README line and whether it is inside a fenced block."""
    inside = False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
            yield line, True
        else:
            yield line, inside


@functools.cache
def _lem_command() -> Any:
    return typer.main.get_command(cli)


def resolve(words: list[str]) -> tuple[list[str], Any, list[str]]:
    """(the subcommand path, its command, the words after it) of ``lem WORD...``; fails on an unknown word.
    (Typer carries a click of its own: groups are told by their ``commands``.)"""
    command = _lem_command()
    path = []
    rest = words[1:]
    while hasattr(command, "commands") and rest and not rest[0].startswith(("-", "[")):
        sub = command.commands.get(rest[0])
        if sub is None:
            pytest.fail(
                f"`lem {' '.join(path)}` has no subcommand {rest[0]!r} (it has {', '.join(sorted(command.commands))})"
            )
        path.append(rest.pop(0))
        command = sub
    return path, command, rest


def _option_names(command: Any) -> set[str]:
    return {name for p in command.params if p.param_type_name == "option" for name in [*p.opts, *p.secondary_opts]}


def _options_named(words: list[str], comment: str) -> list[str]:
    named = []
    for word in words:
        word = word.strip("[]")
        if word.startswith("-") and not re.fullmatch(r"-+\d.*", word):
            named += [w.split("=")[0] for w in word.split("/")]
    return named + re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", comment)


def _alternatives(word: str) -> list[str]:
    """``run|experiment`` -> both; ``FILE.csv|.parquet|.json`` -> FILE.csv, FILE.parquet, FILE.json;
    ``--wait/--no-wait`` -> both."""
    if word.startswith("--") and "/" in word:
        return word.split("/")
    first, *others = word.split("|")
    stem = first.rsplit(".", 1)[0]
    return [first, *(stem + other if other.startswith(".") else other for other in others)]


def fill(word: str, values: dict[str, str]) -> str:
    return PLACEHOLDERS[word].format(**values) if word in PLACEHOLDERS else word


def lem_variants(command: Command) -> Iterator[list[str]]:
    """``lem ...`` with optional parts included, once per alternative (``a|b``, ``pause ID | resume ID``), and
    `docker compose run ... control lem ...` as the lem command inside it."""
    words = command.words()
    if words[0] == "docker":
        words = words[words.index("lem") :]
    parts = [list(group) for is_bar, group in itertools.groupby(words, lambda w: w == "|") if not is_bar]
    lead, _, _ = resolve(parts[0])
    for part in parts:
        full = part if part is parts[0] else ["lem", *lead[:-1], *part]
        words_ = [w.strip("[]") for w in full if w.strip("[]")]
        for picked in itertools.product(*(_alternatives(w) for w in words_)):
            yield list(picked)


def _paths_named(text: str) -> list[str]:
    """Words of ``text`` that name a path in the checkout: under one of its top-level folders, or one of its
    top-level files."""
    tops = {p.name for p in REPO.iterdir() if not p.name.startswith(".git")}
    found = []
    for word in re.split(r"[\s'\"()=,]+", text):
        word = word.strip("`").rstrip(".;:")
        if not word or "://" in word:
            continue
        first = word.split("/")[0]
        if first in tops and (first != word or "." in word) and first not in (".venv", ".run", "bundle"):
            found.append(word)
    return found


def _exists(path: str) -> bool:
    pattern = re.sub(r"<[^>]+>|\{[^}]+\}|X", "*", path)
    return (REPO / path).exists() or bool(list(REPO.glob(pattern.rstrip("/"))))


def _makefile() -> str:
    return (REPO / "Makefile").read_text()


def _compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def _check(command: Command) -> None:
    """Everything about ``command`` that holds without running it (a failure names the README line)."""
    words = command.words()
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words.pop(0)  # VAR=value before a command
    head = words[0]
    text = command.text
    for here, there in re.findall(r"\$PWD/([\w/.-]+):(/[\w/.-]+)", text):  # a docker volume: /configs is configs
        text = text.replace(there + "/", here + "/")
    for path in _paths_named(text):
        assert _exists(path), f"README line {command.line}: `{command.text}` names {path}, which does not exist"
    if head == "lem" or (head == "docker" and "lem" in words):
        for variant in lem_variants(command):
            path, leaf, rest = resolve(variant)
            known = _option_names(leaf)
            for option in _options_named(rest, command.comment):
                assert option in known, (
                    f"README line {command.line}: `lem {' '.join(path)}` has no option "
                    f"{option} (it has {', '.join(sorted(known))})"
                )
            if not command.inline and not hasattr(leaf, "commands"):
                values = {"tmp": "/tmp", "legacy": "tests/data/legacy_results", "id": "1"}
                args = [fill(w, values) for w in rest]
                try:
                    leaf.make_context(" ".join(["lem", *path]), args)
                except TyperException as exc:
                    pytest.fail(
                        f"README line {command.line}: `lem {' '.join(path)} {' '.join(args)}` does not "
                        f"parse: {exc.format_message()}"
                    )
    elif head == "make":
        makefile = _makefile()
        for word in words[1:]:
            if "=" in word:
                variable = word.split("=")[0]
                assert re.search(rf"\$[({{]{variable}[)}}]|^{variable}\s*[?:]?=", makefile, re.M), (
                    f"README line {command.line}: the Makefile does not read {variable}"
                )
            else:
                assert re.search(rf"^{re.escape(word)}:", makefile, re.M), (
                    f"README line {command.line}: the Makefile has no target {word}"
                )
    elif head.startswith("lem-"):
        assert (BIN / head).exists(), f"README line {command.line}: {head} is not an installed entry point"
    elif head == "docker":
        compose = _compose()
        profiles = {p for service in compose["services"].values() for p in service.get("profiles", [])}
        for flag, value in zip(words, words[1:], strict=False):
            if flag == "--profile":
                assert value in profiles, f"README line {command.line}: compose.yaml has no profile {value}"
        if "run" in words:
            service = next(w for w in words[words.index("run") + 1 :] if not w.startswith("-") and ":" not in w)
            assert service in compose["services"], f"README line {command.line}: no compose service {service}"
    elif head in ("python3", ".venv/bin/python", "cp", "export"):
        pass  # their paths are checked above; what they do needs the GPU host or changes the checkout
    else:
        pytest.fail(
            f"README line {command.line}: `{command.text}`: a kind of command this test does not know; "
            "teach it here, or add it to NOT_RUN with the reason"
        )


def test_every_readme_command_names_what_exists() -> None:
    commands = readme_commands()
    assert len([c for c in commands if not c.inline]) >= 35 and any(c.inline for c in commands)
    for command in commands:
        _check(command)
    for prefix in NOT_RUN:
        assert any(c.starts_with(prefix) for c in commands if not c.inline), f"NOT_RUN has {prefix!r}, no command"


def test_every_path_in_the_readme_exists() -> None:
    prose = "\n".join(line for line, inside in _prose_mask() if not inside)
    for span in re.findall(r"`([^`]+)`", prose):
        for path in _paths_named(span):
            assert _exists(path), f"README names `{path}`, which does not exist"


def test_the_checks_fail_on_a_renamed_option_subcommand_target_or_file() -> None:
    for text, says in [
        ("lem results show ID --experimentz", "has no option --experimentz"),
        ("lem results shw ID", "has no subcommand 'shw'"),
        ("lem campaign plan FILE --limit x", "does not parse"),
        ("make campain", "no target campain"),
        ("lem campaign validate configs/campaigns/no-such.yaml", "which does not exist"),
        ("make up LEM_NO_SUCH_VARIABLE=1", "does not read LEM_NO_SUCH_VARIABLE"),
        ("docker compose --profile vlm up", "no profile vlm"),
        ("lem-worker-vlm --hostname x", "not an installed entry point"),
        ("kubectl apply -f x", "a kind of command this test does not know"),
    ]:
        with pytest.raises((AssertionError, pytest.fail.Exception), match=re.escape(says)):
            _check(Command(0, text, "", False))


def _runs() -> list[Command]:
    """The lem commands of the code blocks that run here."""
    return [
        c
        for c in readme_commands()
        if not c.inline
        and c.starts_with("lem")
        and (c.text.startswith(RUN_ANYWAY) or not any(c.starts_with(p) for p in NOT_RUN))
    ]


def test_readme_commands_run(stack_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import delete, select

    from lem_shared.db.models import Campaign
    from lem_shared.db.session import session_scope

    monkeypatch.chdir(REPO)  # the README's paths are relative to the checkout
    legacy = tmp_path / "old-results"  # `lem results import DIR`: the earlier tool's result files
    shutil.copytree(REPO / "tests" / "data" / "legacy_results", legacy)
    with session_scope() as s:
        s.execute(delete(Campaign).where(Campaign.source == "imported"))
    runs = _runs()
    # The import comes first: the commands that take a campaign get the one it makes.
    runs.sort(key=lambda c: not c.starts_with("lem results import"))
    assert runs[0].starts_with("lem results import"), "the README no longer shows `lem results import DIR`"
    runner = CliRunner()
    values = {"tmp": str(tmp_path), "legacy": str(legacy), "id": "0"}
    ran = []
    try:
        for command in runs:
            args = [fill(w, values) for w in next(lem_variants(command))[1:]]
            if args[:2] == ["results", "show"]:
                args = [a for a in args if a != "--json"] + ["--json"]
            result = runner.invoke(cli, args)
            expected = next((code for prefix, code in EXIT_STATUS.items() if command.starts_with(prefix)), 0)
            assert expected is None or result.exit_code == expected, (
                f"README line {command.line}: `lem {' '.join(args)}` exited {result.exit_code}:\n{result.output}"
            )
            assert not result.exception or isinstance(result.exception, SystemExit), result.exception
            assert result.stdout.strip(), f"`lem {' '.join(args)}` printed nothing"
            ran.append(" ".join(args[:2]))
            if command.starts_with("lem results import"):
                with session_scope() as s:
                    values["id"] = str(s.scalar(select(Campaign.id).where(Campaign.source == "imported")))
    finally:
        with session_scope() as s:
            s.execute(delete(Campaign).where(Campaign.source == "imported"))
    assert {"campaign validate", "results show", "results export", "results report", "energy analyse"} <= set(ran)
    assert (tmp_path / "runs.csv").stat().st_size > 0 and (tmp_path / "report.html").stat().st_size > 0


def _readme_yaml() -> list[tuple[int, dict]]:
    blocks = []
    for language, block in _code_blocks():
        if language == "yaml":
            blocks.append((block[0][0], yaml.safe_load("\n".join(text for _, text in block))))
    return blocks


def _campaign_files() -> list[str]:
    prose = "\n".join(line for line, _ in _prose_mask())
    return sorted({p for p in re.findall(r"(?:configs|bench)/[\w/.-]+\.yaml", prose)})


@pytest.mark.parametrize("where", ["yaml", "files"])
def test_readme_campaigns_validate(
    where: str, stack_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    runner = CliRunner()
    if where == "yaml":
        files = []
        for line, spec in _readme_yaml():
            path = tmp_path / f"readme-{line}.yaml"
            path.write_text(yaml.safe_dump({"name": f"readme-{line}", **spec}))
            files.append(str(path))
        assert len(files) >= 3
    else:
        files = _campaign_files()
        assert "configs/campaigns/default.yaml" in files and len(files) >= 4
    for file in files:
        result = runner.invoke(cli, ["campaign", "plan", file, "--json"])
        assert result.exit_code == 0, f"{file}:\n{result.output}"
