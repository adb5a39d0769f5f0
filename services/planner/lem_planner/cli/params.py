"""``lem params``: discover an engine's parameters and write a versioned snapshot; coverage. The discovery modules
(and transformers/torch for pytorch) are imported inside the command so `lem --help` stays fast."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from lem_planner.cli.console import EXIT_BAD_INPUT, fail, print_json
from lem_shared.wire.queues import Backend

params_cli = typer.Typer(
    help="Engine parameters: discover them from the engines themselves; coverage.", no_args_is_help=True
)

# The committed snapshots live in the shared package (plan-time checks read them); in a source checkout this is
# shared/lem_shared/params/snapshots. Discovery writes to a user folder unless --out names that one: a discovery
# run never rewrites a committed snapshot by accident.
COMMITTED = Path(__file__).resolve().parents[4] / "shared" / "lem_shared" / "params" / "snapshots"


def default_out() -> Path:
    """``$XDG_CACHE_HOME/lem/snapshots`` (``~/.cache/lem/snapshots``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lem" / "snapshots"


_DOWNLOAD_HINT = {
    "vllm": "python3 -m pip download --no-deps vllm==<version> -d /tmp/wheels",
    "trtllm": "python3 -m pip download --no-deps tensorrt_llm==<version> --extra-index-url https://pypi.nvidia.com "
    "-d /tmp/wheels",
}


@params_cli.command("discover")
def params_discover(
    backend: Annotated[Backend, typer.Argument(help="Engine: pytorch (introspection), vllm or trtllm (static).")],
    source: Annotated[
        str | None,
        typer.Option(
            "--source", help="vllm/trtllm: a wheel (.whl) or source tree of the engine; parsed, not imported."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for <backend>-<version>.json (default "
            "~/.cache/lem/snapshots; shared/lem_shared/params/snapshots to commit "
            "it).",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print {backend, engine_version, parameters, groups, path} as JSON.")
    ] = False,
) -> None:
    """Read BACKEND's parameter surface and write <backend>-<version>.json into --out (a user folder by default)."""
    from lem_planner.params.discover import discover, write_snapshot
    from lem_planner.params.static import SourceError

    name = backend.value
    if name == "pytorch" and source is not None:
        raise fail(
            "--source applies to vllm and trtllm; pytorch is introspected from the installed transformers",
            EXIT_BAD_INPUT,
        )
    if name != "pytorch":
        if source is None:
            raise fail(
                f"{name} discovery needs --source PATH (a .whl or a source tree); "
                f"get a wheel with `{_DOWNLOAD_HINT[name]}`",
                EXIT_BAD_INPUT,
            )
        if not Path(source).exists():
            raise fail(
                f"--source {source} does not exist; pass a .whl or a source tree "
                f"(get a wheel with `{_DOWNLOAD_HINT[name]}`)",
                EXIT_BAD_INPUT,
            )
    from lem_planner.progress import Steps

    try:
        with Steps(f"{name}: starting") as steps:
            snapshot = discover(name, source, step=lambda text: steps.step(f"{name}: {text}"))
    except SourceError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    path = write_snapshot(snapshot, out or default_out())
    groups: dict[str, int] = {}
    for parameter in snapshot["parameters"]:
        groups[parameter["group"]] = groups.get(parameter["group"], 0) + 1
    if as_json:
        print_json(
            {
                "backend": name,
                "engine_version": snapshot["engine_version"],
                "parameters": len(snapshot["parameters"]),
                "groups": groups,
                "path": str(path),
            }
        )
        return
    summary = ", ".join(f"{group} {count}" for group, count in groups.items())
    typer.echo(
        f"{name} {snapshot['engine_version']}: {len(snapshot['parameters'])} parameters ({summary}) written to {path}"
    )
    if path.parent.resolve() != COMMITTED.resolve():
        typer.echo(f"plan-time checks read the committed snapshots: to commit it, run again with --out {COMMITTED}")


@params_cli.command("coverage")
def params_coverage(
    backend: Annotated[Backend | None, typer.Argument(help="One backend (default: all).")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="{backend: {engine_version, coverage_pct, exposed, missing, ...}} on stdout.")
    ] = False,
) -> None:
    """Per backend: relevant parameters exposed first-class, reachable through extra, not exposed; coverage %."""
    from lem_shared.params.coverage import coverage

    names = [backend.value] if backend else [b.value for b in Backend]
    report = {name: coverage(name) for name in names}
    if as_json:
        print_json(report)
        return
    for name, c in report.items():
        if c.get("error"):
            typer.echo(f"{name}: {c['error']}")
            continue
        verdict = "meets" if c["coverage_pct"] >= c["target_pct"] else "BELOW"
        typer.echo(
            f"{name} {c['engine_version']}: {c['coverage_pct']} % of {c['relevant']} relevant parameters "
            f"first-class ({verdict} the {c['target_pct']:g} % target); {len(c['via_extra'])} through extra, "
            f"{len(c['not_exposed'])} not exposed, {c['not_relevant']} not relevant, "
            f"{len(c['unclassified'])} unclassified (of {c['discovered']} discovered)"
        )
        for label in c["via_extra"]:
            typer.echo(f"  extra only:  {label}")
        for item in c["not_exposed"]:
            typer.echo(f"  not exposed: {item['name']} ({item['reason']})")
        for label in c["unclassified"]:
            typer.echo(f"  unclassified: {label} (add it to lem_shared/params/relevance/{name}.yaml)")
