"""STAND-IN support, part of no engine: what the stand-in ``vllm`` and ``tensorrt_llm`` packages share.

This folder is put on ``sys.path`` only by tests (``tests/unit/shared/runtime/test_adapter_control_flow.py``);
nothing here is installed, and no distribution metadata is shipped, so ``importlib.metadata`` never reports a
stand-in as an engine.

- the committed parameter snapshot of an engine (``shared/lem_shared/params/snapshots``) is what a stand-in checks
  keyword arguments against: an unknown name raises TypeError, as the real engines' constructors do; a value whose
  snapshot type is made only of bool/int/float/str/None/Literal[...] must match it (stricter than vLLM, whose
  ``EngineArgs`` and ``SamplingParams`` do not check types when built);
- ``CALLS``-style recording: each stand-in package keeps a module-level list of ``Call`` records;
- faults on demand: the file named by ``$STAND_IN_ENGINE_FAULTS`` holds lines ``<point> <action>`` (points ``load``
  and ``generate``; actions ``raise``, ``hang``, ``exit``), read at each point, so a test can make an engine fail in
  this process or in a spawned engine host;
- the stand-in "model": a local folder with ``config.json``; prompts must be token ids inside its vocabulary; each
  completion is made of deterministic token ids that never hit EOS unless EOS is allowed.
"""

from __future__ import annotations

import ast
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lem_shared.params.snapshots import snapshot_files

REQUIRED = "<required>"
FAULTS_ENV = "STAND_IN_ENGINE_FAULTS"
SIMPLE_TYPES: dict[str, tuple[type, ...]] = {
    "bool": (bool,),
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "None": (type(None),),
}


@dataclass(frozen=True)
class Call:
    """One call a stand-in engine received: what was called and with which keyword arguments."""

    name: str
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class Snapshot:
    version: str
    groups: dict[str, dict[str, dict[str, Any]]]

    def parameters(self, groups: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        """``{name: parameter}`` over ``groups``; a later group's entry wins (TorchLlmArgs over BaseLlmArgs)."""
        out: dict[str, dict[str, Any]] = {}
        for group in groups:
            out.update(self.groups.get(group, {}))
        return out

    def default(self, group: str, name: str) -> Any:
        value = self.groups[group][name]["default"]
        if isinstance(value, str) and value.startswith("<"):
            raise LookupError(f"the snapshot gives no literal default for {group}.{name}: {value}")
        return value


def load_snapshot(backend: str) -> Snapshot:
    """The newest committed snapshot of ``backend`` (the one plan-time checks use)."""
    files = snapshot_files(backend)
    if not files:
        raise RuntimeError(f"no committed {backend} parameter snapshot for the stand-in to check against")
    data = json.loads(files[-1].read_text(encoding="utf-8"))
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for parameter in data["parameters"]:
        groups.setdefault(parameter["group"], {})[parameter["name"]] = parameter
    return Snapshot(str(data["engine_version"]), groups)


def _split_top(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside brackets."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [part.strip() for part in parts]


def _accepts(type_text: str) -> tuple[tuple[type, ...], tuple[Any, ...]] | None:
    """(allowed types, allowed literal values) of a snapshot type, or None when it is not one a stand-in checks."""
    text = type_text.strip()
    for wrapper, extra in (("Optional[", ("None",)), ("Union[", ())):
        if text.startswith(wrapper) and text.endswith("]"):
            return _accepts_all([*_split_top(text[len(wrapper) : -1], ","), *extra])
    if text.startswith("Literal[") and text.endswith("]"):
        try:
            values = ast.literal_eval("[" + text[len("Literal[") : -1] + "]")
        except (ValueError, SyntaxError):
            return None
        return (), tuple(values)
    parts = _split_top(text, "|")
    if len(parts) > 1:
        return _accepts_all(parts)
    if text in SIMPLE_TYPES:
        return SIMPLE_TYPES[text], ()
    return None


def _accepts_all(parts: list[str]) -> tuple[tuple[type, ...], tuple[Any, ...]] | None:
    types: tuple[type, ...] = ()
    values: tuple[Any, ...] = ()
    for part in parts:
        accepted = _accepts(part)
        if accepted is None:
            return None
        types, values = types + accepted[0], values + accepted[1]
    return types, values


def type_problem(value: Any, type_text: str) -> str | None:
    """Why ``value`` does not fit the snapshot type ``type_text``; None when it fits or the type is not checked."""
    accepted = _accepts(type_text or "")
    if accepted is None:
        return None
    types, literals = accepted
    if any(value == literal and type(value) is type(literal) for literal in literals):
        return None
    if isinstance(value, bool) and bool not in types:
        return f"must be {type_text}, got {value!r}"
    if isinstance(value, types):
        return None
    return f"must be {type_text}, got {value!r}"


def check_kwargs(call: str, kwargs: dict[str, Any], snapshot: Snapshot, groups: tuple[str, ...]) -> None:
    """Raise TypeError the way a Python signature (or a pydantic model with extra="forbid") would."""
    known = snapshot.parameters(groups)
    for name in kwargs:
        if name not in known:
            raise TypeError(
                f"{call}() got an unexpected keyword argument {name!r} "
                f"(stand-in: not in the {'/'.join(groups)} group of the {snapshot.version} snapshot)"
            )
    for name, parameter in known.items():
        if parameter.get("default") == REQUIRED and name not in kwargs:
            raise TypeError(f"{call}() missing 1 required keyword argument: {name!r}")
    for name, value in kwargs.items():
        problem = type_problem(value, str(known[name].get("type") or ""))
        if problem:
            raise TypeError(f"{call}(): {name} {problem}")


def fault(point: str) -> None:
    """Act on the fault the test asked for at ``point`` (see the module docstring); nothing when none is asked."""
    path = os.environ.get(FAULTS_ENV)
    if not path or not Path(path).exists():
        return
    for line in Path(path).read_text().splitlines():
        where, _, action = line.strip().partition(" ")
        if where != point:
            continue
        if action == "raise":
            raise RuntimeError(f"stand-in engine failure in {point} (asked for by the test)")
        if action == "hang":
            time.sleep(3600)
        if action == "exit":
            os._exit(13)


@dataclass(frozen=True)
class StandInModel:
    """What a stand-in reads from the folder it is asked to load."""

    config: dict[str, Any]
    has_weights: bool
    has_tokenizer: bool

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def eos_token_id(self) -> int:
        return int(self.config.get("eos_token_id", 2))

    @property
    def max_position_embeddings(self) -> int:
        return int(self.config.get("max_position_embeddings", 2048))


def read_model(model: Any, engine: str, load_format: str, skip_tokenizer_init: bool) -> StandInModel:
    """The local model folder ``model``, checked the way loading it would: a config always; weights unless
    ``load_format`` is ``dummy`` (random weights); a tokenizer unless ``skip_tokenizer_init``."""
    folder = Path(str(model))
    if not (folder / "config.json").is_file():
        raise OSError(
            f"stand-in {engine}: {model!r} is not a local folder with a config.json (the stand-in loads "
            "local folders only; it downloads nothing)"
        )
    files = {p.name for p in folder.iterdir()}
    loaded = StandInModel(
        config=json.loads((folder / "config.json").read_text()),
        has_weights=any(name.endswith((".safetensors", ".bin")) for name in files),
        has_tokenizer=bool(files & {"tokenizer.json", "tokenizer_config.json", "tokenizer.model"}),
    )
    if load_format != "dummy" and not loaded.has_weights:
        raise FileNotFoundError(f"stand-in {engine}: no weights in {folder} and load_format={load_format!r}")
    if not skip_tokenizer_init and not loaded.has_tokenizer:
        raise OSError(f"stand-in {engine}: no tokenizer in {folder} and skip_tokenizer_init is off")
    return loaded


def prompt_token_ids(prompt: Any, engine: str, has_tokenizer: bool) -> list[int]:
    """The token ids of one prompt given as ``TokensPrompt`` (a dict); text needs a tokenizer."""
    if isinstance(prompt, str):
        if not has_tokenizer:
            raise ValueError(f"stand-in {engine}: a text prompt needs a tokenizer (skip_tokenizer_init is on)")
        return [ord(char) for char in prompt]
    if not isinstance(prompt, dict) or "prompt_token_ids" not in prompt:
        raise TypeError(f"stand-in {engine}: a prompt must be a str or TokensPrompt, got {type(prompt).__name__}")
    ids = prompt["prompt_token_ids"]
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise TypeError(f"stand-in {engine}: prompt_token_ids must be a list of int")
    return ids


def check_prompt(ids: list[int], max_tokens: int, model: StandInModel, max_len: int, engine: str) -> None:
    """Refuse what the real engines refuse: an empty prompt, token ids outside the vocabulary, and a prompt that
    cannot grow by ``max_tokens`` within the engine's context length."""
    if not ids:
        raise ValueError(f"stand-in {engine}: the prompt is empty")
    bad = [t for t in ids if not 0 <= t < model.vocab_size]
    if bad:
        raise ValueError(f"stand-in {engine}: token id {bad[0]} is out of vocabulary (size {model.vocab_size})")
    if len(ids) + max_tokens > max_len:
        raise ValueError(
            f"stand-in {engine}: prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the "
            f"context length {max_len}"
        )


def completion(
    ids: list[int], index: int, max_tokens: int, min_tokens: int, eos: int | None, vocab_size: int
) -> list[int]:
    """Deterministic new tokens: ``max_tokens`` of them, never ``eos``, unless ``eos`` may end the sequence (not
    ignored): then this "model" emits it right after ``min_tokens`` tokens."""
    out: list[int] = []
    seed = sum(ids) + 7919 * index
    while len(out) < max_tokens:
        if eos is not None and len(out) >= min_tokens:
            out.append(eos)
            break
        token = (seed + 31 * len(out)) % vocab_size
        if token == eos:
            token = (token + 1) % vocab_size
        out.append(token)
    return out
