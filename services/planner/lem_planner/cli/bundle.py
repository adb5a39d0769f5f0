"""``lem bundle``: build an offline engine bundle for an air-gapped GPU host, verify it, unpack it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lem_planner.cli.console import EXIT_BAD_INPUT, fail

bundle_cli = typer.Typer(help="Offline engine bundles for GPU hosts without a package index.", no_args_is_help=True)


@bundle_cli.command("build")
def bundle_build(
    requirements: Annotated[
        list[str], typer.Argument(help="What the host must run, as pip writes it: 'vllm==0.26.0' 'openai<3' ...")
    ],
    host_packages: Annotated[
        Path,
        typer.Option(
            "--host-packages",
            help="The host's `python3 -m pip list --format=freeze` output: kept out of the bundle "
            "wherever it satisfies the requirements.",
        ),
    ],
    python_version: Annotated[str, typer.Option("--python-version", help="The host's Python, major.minor.")],
    glibc: Annotated[str, typer.Option("--glibc", help="The host's glibc, 2.N (`ldd --version`).")] = "2.28",
    machine: Annotated[str, typer.Option("--machine", help="The host's `uname -m`.")] = "x86_64",
    out: Annotated[Path, typer.Option("--out", help="Folder for the manifest, the parts and unpack.py.")] = Path(
        "bundle"
    ),
    part_mib: Annotated[float, typer.Option("--part-mib", help="Largest part, MiB.")] = 47.0,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", help="A dependency the host does not need (with what only it needs); repeatable."),
    ] = None,
    prune: Annotated[
        list[str] | None,
        typer.Option(
            "--prune", help="A glob inside the installed tree to delete (kernels for other GPUs); repeatable."
        ),
    ] = None,
    python: Annotated[
        str | None,
        typer.Option(
            "--python", help="An interpreter of the host's Python version here (found on PATH or pyenv if unset)."
        ),
    ] = None,
    pip_arg: Annotated[
        list[str] | None,
        typer.Option("--pip-arg", help="Passed to pip (an index: --pip-arg=--index-url=URL); repeatable."),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="The bundle's name in its manifest.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")] = False,
) -> None:
    """Resolve REQUIREMENTS for the host, keep what it lacks, install, prune, and write verified archive parts."""
    from lem_planner.bundle.build import Target, build
    from lem_planner.bundle.unpack import BundleError

    if not host_packages.is_file():
        raise fail(
            f"--host-packages {host_packages} does not exist; on the host run "
            "`python3 -m pip list --format=freeze > host-packages.txt` and copy it here",
            EXIT_BAD_INPUT,
        )
    try:
        build(
            requirements,
            Target(python_version, glibc, machine),
            host_packages.read_text(),
            out,
            exclude=exclude or [],
            prune_globs=prune or [],
            part_mib=part_mib,
            python=python,
            pip_args=pip_arg or [],
            name=name,
            force=force,
            progress=typer.echo,
        )
    except BundleError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None


@bundle_cli.command("verify")
def bundle_verify(bundle: Annotated[Path, typer.Argument(help="The bundle folder.")]) -> None:
    """Check every part of BUNDLE against its manifest (sizes and sha256)."""
    from lem_planner.bundle.unpack import BundleError, verify

    try:
        manifest = verify(bundle)
    except BundleError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    typer.echo(f"ok: {len(manifest['archive']['parts'])} parts of {manifest['name']} verified")


@bundle_cli.command("unpack")
def bundle_unpack(
    bundle: Annotated[Path, typer.Argument(help="The bundle folder.")],
    target: Annotated[Path, typer.Option("--target", help="Install here (a folder for PYTHONPATH).")],
    replace: Annotated[bool, typer.Option("--replace", help="Swap an existing target for this bundle.")] = False,
) -> None:
    """Verify BUNDLE and install it at TARGET (hosts without the project run the bundle's own unpack.py)."""
    from lem_planner.bundle.unpack import main

    raise typer.Exit(main([str(bundle), "--target", str(target)] + (["--replace"] if replace else [])))
