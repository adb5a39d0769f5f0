"""Parameter discovery: each engine's parameter surface as a versioned snapshot
(``params/snapshots/<backend>-<engine version>.json``; pytorch's engine version is transformers', torch's is
recorded under ``components``).

pytorch is introspected from the installed transformers and torch:

* "generation": the attributes a default `transformers.GenerationConfig()` sets (its `to_dict()`, which is
  what `__init__` really assigns in this version, rather than a hand list), typed and documented from the
  class docstring's `Args:` entries;
  plus `generate`'s own named keywords (assistant_model, streamer, ...);
* "loading": `PreTrainedModel.from_pretrained`'s named parameters, the entries of its docstring's
  `Parameters:` section, and the `kwargs.pop("name", default)` calls in its source (keywords it reads from
  `**kwargs`, e.g. `dtype`, `device_map`, `attn_implementation`);
* "compile": `torch.compile`'s keyword parameters.

vllm and trtllm are read statically from a wheel or source tree (see `static`).
"""

from __future__ import annotations

import ast
import inspect
import json
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lem_planner.params.static import (
    REQUIRED,
    STATIC_SPECS,
    SourceError,
    discover_static,
    first_sentence,
    jsonable,
    parse_docstring_args,
)

BACKENDS = ("pytorch", "vllm", "trtllm")
# Loading keywords that are not about loading a model for inference (plumbing, callbacks, internals).
_LOADING_SKIP = {
    "pretrained_model_name_or_path",
    "model_args",
    "kwargs",
    "cls",
    "proxies",
    "tqdm_class",
    "output_loading_info",
    "adapter_kwargs",
    "state_dict",
}


def _type_text(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("collections.abc.", "")


def _default(value: Any) -> Any:
    return REQUIRED if value is inspect.Parameter.empty else jsonable(value)


def _param(name: str, group: str, type_: str, default: Any, doc: str, source: str) -> dict[str, Any]:
    return {"name": name, "group": group, "type": type_, "default": default, "doc": doc, "source": source}


def _generation() -> list[dict[str, Any]]:
    from transformers import GenerationConfig

    documented = parse_docstring_args(GenerationConfig.__doc__)
    values = GenerationConfig().to_dict()
    out = []
    for name, value in values.items():
        if name.startswith("_") or name == "transformers_version":
            continue
        type_, doc = documented.get(name, ("", ""))
        out.append(_param(name, "generation", type_, jsonable(value), doc, "GenerationConfig"))
    return out + _generate_keywords({p["name"] for p in out})


def _generate_keywords(known: set[str]) -> list[dict[str, Any]]:
    """``generate``'s own keywords that are not GenerationConfig attributes: named ones and those it pops from
    ``**kwargs`` (e.g. ``trust_remote_code`` for decoding recipes on the hub)."""
    from transformers import GenerationMixin

    function = GenerationMixin.generate
    documented = parse_docstring_args(function.__doc__)
    out = []
    for name, parameter in inspect.signature(function).parameters.items():
        if (
            name in ("self", "inputs")
            or name in known
            or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        ):
            continue
        type_, doc = documented.get(name, ("", ""))
        out.append(
            _param(
                name,
                "generation",
                _type_text(parameter.annotation) or type_,
                _default(parameter.default),
                first_sentence(doc),
                "GenerationMixin.generate",
            )
        )
    named = known | {p["name"] for p in out} | {"self", "inputs"}
    for name, default in _kwargs_pops(function).items():
        if name not in named and not name.startswith("_"):
            type_, doc = documented.get(name, ("", ""))
            out.append(_param(name, "generation", type_, default, first_sentence(doc), "GenerationMixin.generate"))
    return out


def _kwargs_pops(function: Any) -> dict[str, Any]:
    """``{name: default}`` of the ``kwargs.pop("name", default)`` calls in `function`'s source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return {}
    found: dict[str, Any] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("pop", "get")
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "kwargs"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            default: Any = None
            if len(node.args) > 1:
                try:
                    default = jsonable(ast.literal_eval(node.args[1]))
                except (ValueError, SyntaxError, TypeError):
                    default = f"<expr: {ast.unparse(node.args[1])}>"
            found.setdefault(node.args[0].value, default)
    return found


def _loading() -> list[dict[str, Any]]:
    from transformers import PreTrainedModel

    function = PreTrainedModel.from_pretrained
    documented = parse_docstring_args(function.__doc__)
    out: dict[str, dict[str, Any]] = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD) or name in _LOADING_SKIP:
            continue
        type_, doc = documented.get(name, ("", ""))
        out[name] = _param(
            name,
            "loading",
            _type_text(parameter.annotation) or type_,
            _default(parameter.default),
            doc,
            "PreTrainedModel.from_pretrained",
        )
    popped = _kwargs_pops(function)
    for name in [*documented, *popped]:
        if name in out or name in _LOADING_SKIP or name.startswith("_"):
            continue
        type_, doc = documented.get(name, ("", ""))
        out[name] = _param(name, "loading", type_, popped.get(name), doc, "PreTrainedModel.from_pretrained")
    return list(out.values())


def _compile() -> list[dict[str, Any]]:
    import torch

    documented = parse_docstring_args(torch.compile.__doc__)
    out = []
    for name, parameter in inspect.signature(torch.compile).parameters.items():
        if name == "model" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        type_, doc = documented.get(name, ("", ""))
        out.append(
            _param(
                name,
                "compile",
                _type_text(parameter.annotation) or type_,
                _default(parameter.default),
                first_sentence(doc),
                "torch.compile",
            )
        )
    return out


def discover_pytorch(step: Callable[[str], None] = lambda text: None) -> tuple[str, str, list[dict[str, Any]]]:
    """(transformers version, torch version, parameters) of the installed transformers and torch; ``step`` is
    told what is being read (importing the two takes most of the time)."""
    step("importing transformers and torch")
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise SourceError(f"pytorch discovery imports transformers and torch: {exc}") from None
    step("reading GenerationConfig and generate")
    generation = _generation()
    step("reading from_pretrained")
    loading = _loading()
    step("reading torch.compile")
    return transformers.__version__, str(torch.__version__), generation + loading + _compile()


def discover(
    backend: str, source: str | Path | None = None, step: Callable[[str], None] = lambda text: None
) -> dict[str, Any]:
    """The snapshot of `backend`'s parameters: introspection for pytorch, `source` (a wheel or source tree)
    for vllm and trtllm; ``step`` is told what is being read."""
    components: dict[str, str] = {}
    if backend == "pytorch":
        version, torch_version, parameters = discover_pytorch(step)
        components = {"transformers": version, "torch": torch_version}
        method = "introspection"
    elif backend in STATIC_SPECS:
        if source is None:
            raise SourceError(f"{backend} discovery needs a wheel or source tree")
        step(f"parsing {source}")
        found, files, parameters = discover_static(backend, source)
        if found is None:
            raise SourceError(f"no engine version in {source} (no *.dist-info/METADATA, PKG-INFO or version.py)")
        version = found
        method = "static:" + ",".join(files)
    else:
        raise SourceError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    parameters.sort(key=lambda p: (p["group"], p["name"]))
    return {
        "backend": backend,
        "engine_version": version,
        "discovered_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "method": method,
        **({"components": components} if components else {}),
        "parameters": parameters,
    }


def snapshot_path(out_dir: str | Path, snapshot: dict[str, Any]) -> Path:
    return Path(out_dir) / f"{snapshot['backend']}-{snapshot['engine_version']}.json"


def write_snapshot(snapshot: dict[str, Any], out_dir: str | Path) -> Path:
    path = snapshot_path(out_dir, snapshot)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(snapshot, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load_snapshot(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))
