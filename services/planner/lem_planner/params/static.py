"""Static parameter discovery: read an engine's parameter classes from its wheel or source tree with `ast`,
without importing the engine (vLLM and TensorRT-LLM need GPU builds of torch to import).

A class's parameters are its annotated class attributes (dataclass fields, pydantic fields, msgspec Struct
fields); `ClassVar`s and names starting with `_` are left out. A field's default is its literal value, the
`default=` (or first positional argument) of a `Field(...)`/`field(...)` call, or a reference such as vLLM's
`ModelConfig.dtype` / `get_field(CacheConfig, "x")`, which is followed to the referenced class's field. Its
doc is the attribute's docstring (the string right after it), else `Field(description=...)`, else the class
docstring's `Args:` entry. Defaults that are not literals are recorded as text: `<expr: ...>`,
`<factory: ...>`, or `<required>`.
"""

from __future__ import annotations

import ast
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUIRED = "<required>"
_FIELD_CALLS = {"Field", "field", "PrivateAttr"}
_SKIP_NAMES = {"model_config"}


class SourceError(Exception):
    """The wheel or source tree cannot be read, or lacks a file or class discovery needs."""


@dataclass
class FieldInfo:
    name: str
    type: str
    default: Any
    doc: str
    ref: tuple[str, str] | None = None  # (class, attribute) the default points to, still to be followed


@dataclass
class ClassInfo:
    name: str
    path: str
    bases: list[str]
    fields: list[FieldInfo] = field(default_factory=list)


class SourceTree:
    """A `.whl` (zip) or a directory holding an engine's Python package."""

    def __init__(self, location: str | Path) -> None:
        self.location = Path(location)
        if not self.location.exists():
            raise SourceError(f"{self.location} does not exist")
        self._zip: zipfile.ZipFile | None = None
        if self.location.is_file():
            if not zipfile.is_zipfile(self.location):
                raise SourceError(f"{self.location} is neither a directory nor a wheel (.whl zip)")
            self._zip = zipfile.ZipFile(self.location)
            self._names = [n for n in self._zip.namelist() if not n.endswith("/")]
        else:
            base = self.location
            self._names = sorted(
                str(p.relative_to(base))
                for p in base.rglob("*")
                if p.is_file() and (p.suffix == ".py" or p.name in ("METADATA", "PKG-INFO"))
            )
        self._modules: dict[str, ast.Module | None] = {}
        self._classes: dict[str, ClassInfo | None] = {}

    def _resolve(self, relpath: str) -> str | None:
        """The stored name of `relpath` (e.g. ``vllm/engine/arg_utils.py``), also under a leading folder such
        as an sdist's ``vllm-0.9.0/`` or a checkout's ``src/``."""
        if relpath in self._names:
            return relpath
        suffix = "/" + relpath
        return next((n for n in self._names if n.endswith(suffix)), None)

    def read(self, relpath: str) -> str | None:
        name = self._resolve(relpath)
        if name is None:
            return None
        if self._zip is not None:
            return self._zip.read(name).decode("utf-8", errors="replace")
        return (self.location / name).read_text(encoding="utf-8", errors="replace")

    def version(self, package: str) -> str | None:
        """The engine version: ``Version:`` of ``*.dist-info/METADATA`` (or an sdist's PKG-INFO), else
        ``__version__`` in ``<package>/version.py`` or ``<package>/_version.py``."""
        for name in self._names:
            if name.endswith((".dist-info/METADATA", "PKG-INFO")):
                found = version_from_metadata(self.read(name) or "")
                if found:
                    return found
        for candidate in (f"{package}/version.py", f"{package}/_version.py"):
            text = self.read(candidate)
            if text is not None and (found := version_from_module(text)):
                return found
        return None

    def _module(self, name: str) -> ast.Module | None:
        if name not in self._modules:
            text = self.read(name)
            try:
                self._modules[name] = ast.parse(text) if text is not None else None
            except SyntaxError:
                self._modules[name] = None
        return self._modules[name]

    def find_class(self, class_name: str, prefer: tuple[str, ...] = ()) -> ClassInfo | None:
        """The class named `class_name`: first in the `prefer` files, then in any ``.py`` under `prefer`'s
        folders, then anywhere in the tree (a text search before parsing)."""
        if class_name in self._classes:
            return self._classes[class_name]
        pattern = re.compile(rf"^class {re.escape(class_name)}\b", re.MULTILINE)
        py = [n for n in self._names if n.endswith(".py")]
        folders = tuple(p.rsplit("/", 1)[0] + "/" for p in prefer if "/" in p)
        ordered = (
            [n for p in prefer if (n := self._resolve(p))]
            + [n for n in py if any(("/" + n).find("/" + f) >= 0 for f in folders)]
            + py
        )
        seen: set[str] = set()
        for name in ordered:
            if name in seen:
                continue
            seen.add(name)
            text = self.read(name) or ""
            if not pattern.search(text):
                continue
            module = self._module(name)
            for node in module.body if module else ():
                if isinstance(node, ast.ClassDef) and node.name == class_name:
                    info = parse_class(node, name)
                    self._classes[class_name] = info
                    return info
        self._classes[class_name] = None
        return None

    def class_fields(
        self, class_name: str, prefer: tuple[str, ...] = (), inherit: bool = False, stop: frozenset[str] = frozenset()
    ) -> list[FieldInfo]:
        """The class's fields with references followed; with `inherit`, also its bases' (found in the tree,
        except those in `stop`), a subclass's field replacing a base's of the same name."""
        info = self.find_class(class_name, prefer)
        if info is None:
            raise SourceError(f"class {class_name} not found in {self.location} (looked in {', '.join(prefer)})")
        merged: dict[str, FieldInfo] = {}
        if inherit:
            for base in info.bases:
                if base in stop or self.find_class(base, prefer) is None:
                    continue
                for f in self.class_fields(base, prefer, inherit=True, stop=stop):
                    merged[f.name] = f
        for f in info.fields:
            merged[f.name] = self._follow(f, prefer, depth=0)
        return list(merged.values())

    def _follow(self, f: FieldInfo, prefer: tuple[str, ...], depth: int) -> FieldInfo:
        """Replace a reference default (``ModelConfig.dtype``) by the referenced field's default; borrow its
        doc when the field has none."""
        if f.ref is None or depth > 5:
            return f
        owner, attr = f.ref
        target_class = self.find_class(owner, prefer)
        target = next((t for t in target_class.fields if t.name == attr), None) if target_class else None
        if target is None:
            return FieldInfo(f.name, f.type, f"<expr: {owner}.{attr}>", f.doc)
        target = self._follow(target, prefer, depth + 1)
        return FieldInfo(f.name, f.type or target.type, target.default, f.doc or target.doc)


def version_from_metadata(text: str) -> str | None:
    match = re.search(r"^Version:\s*(\S+)", text, re.MULTILINE)
    return match.group(1) if match else None


def version_from_module(text: str) -> str | None:
    """``__version__ = "1.2.0"`` (also chained, ``__version__ = version = '0.9.0'``)."""
    try:
        module = ast.parse(text)
    except SyntaxError:
        return None
    for node in module.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets
        ):
            value = _literal(node.value)
            if isinstance(value, str):
                return value
    return None


_ARG_LINE = re.compile(
    r"^(?P<indent>\s*)(?P<name>\*{0,2}\w+)\s*(?:\((?P<type>[^)]*(?:\)[^:]*)?)\))?\s*:\s*(?P<rest>.*)$"
)


def parse_docstring_args(doc: str | None) -> dict[str, tuple[str, str]]:
    """``{name: (type, one-line doc)}`` from a Google-style docstring's ``Args:``/``Parameters:`` section
    (``name (type, *optional*, defaults to x): text``, the text on the same line or the next)."""
    if not doc:
        return {}
    lines = doc.expandtabs().splitlines()
    out: dict[str, tuple[str, str]] = {}
    in_section = False
    entry_indent: int | None = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped in ("Args:", "Arguments:", "Parameters:", "Params:", "Attributes:"):
            in_section, entry_indent = True, None
            continue
        if not in_section or not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        if entry_indent is not None and indent < entry_indent and re.match(r"^[A-Z]\w*( \w+)*:$", stripped):
            in_section = False  # the next section (Returns:, Examples:)
            continue
        match = _ARG_LINE.match(line)
        if not match or (entry_indent is not None and indent != entry_indent):
            continue
        if match.group("type") is None and not match.group("rest"):
            continue
        entry_indent = indent
        name = match.group("name").lstrip("*")
        text = match.group("rest").strip()
        for nxt in lines[i + 1 :]:  # the entry's continuation: deeper-indented lines up to a blank line
            if not nxt.strip():
                if text:
                    break
                continue
            if len(nxt) - len(nxt.lstrip()) <= indent:
                break
            text = f"{text} {nxt.strip()}"
        out.setdefault(name, (clean_type(match.group("type") or ""), first_sentence(text)))
    return out


def clean_type(text: str) -> str:
    """``\\`int\\`, *optional*, defaults to 1`` -> ``int``."""
    parts = [p.strip() for p in text.replace("`", "").split(",")]
    kept = [p for p in parts if p and not p.startswith(("*optional*", "optional", "defaults to", "default"))]
    return ", ".join(kept)


def first_sentence(text: str) -> str:
    text = " ".join(text.split())
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    return (match.group(1) if match else text)[:300]


def parse_class(node: ast.ClassDef, path: str) -> ClassInfo:
    info = ClassInfo(node.name, path, [_dotted(b).rsplit(".", 1)[-1] for b in node.bases])
    docstring_args = parse_docstring_args(ast.get_docstring(node))
    body = node.body
    for i, stmt in enumerate(body):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        name = stmt.target.id
        annotation = ast.unparse(stmt.annotation)
        if name.startswith("_") or name in _SKIP_NAMES or re.match(r"^(typing\.)?ClassVar\b", annotation):
            continue
        default, description, ref, status = _default_of(stmt.value)
        if default is _PRIVATE:
            continue
        doc = ""
        if i + 1 < len(body):
            nxt = body[i + 1]
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                doc = first_sentence(nxt.value.value)
        doc = doc or first_sentence(description or "") or docstring_args.get(name, ("", ""))[1]
        if status:
            doc = f"[{status}] {doc}".strip()
        info.fields.append(FieldInfo(name, annotation, default, doc, ref))
    return info


_PRIVATE = object()


def _default_of(value: ast.expr | None) -> tuple[Any, str | None, tuple[str, str] | None, str | None]:
    """(default, description, reference, status) of a field's assigned value."""
    if value is None:
        return REQUIRED, None, None, None
    if isinstance(value, ast.Call):
        func = _dotted(value.func)
        short = func.rsplit(".", 1)[-1]
        if short == "PrivateAttr":
            return _PRIVATE, None, None, None
        if short in _FIELD_CALLS:
            kwargs = {k.arg: k.value for k in value.keywords if k.arg}
            description = _literal(kwargs["description"]) if "description" in kwargs else None
            status = _literal(kwargs["status"]) if "status" in kwargs else None
            description = description if isinstance(description, str) else None
            status = status if isinstance(status, str) else None
            if "default" in kwargs:
                default, _, ref, _ = _default_of(kwargs["default"])
            elif "default_factory" in kwargs:
                default, ref = f"<factory: {ast.unparse(kwargs['default_factory'])}>", None
            elif value.args and not (isinstance(value.args[0], ast.Constant) and value.args[0].value is Ellipsis):
                default, _, ref, _ = _default_of(value.args[0])
            else:
                default, ref = REQUIRED, None
            return default, description, ref, status
        if short == "get_field" and len(value.args) == 2:
            owner, attr = _dotted(value.args[0]), _literal(value.args[1])
            if owner and isinstance(attr, str):
                return None, None, (owner.rsplit(".", 1)[-1], attr), None
    if (
        isinstance(value, ast.Attribute)
        and isinstance(value.value, ast.Name)
        and value.value.id[:1].isupper()
        and not value.attr.isupper()
    ):
        # `ModelConfig.dtype`: a reference to another class's field (an enum member such as `Kind.CUMULATIVE`
        # or `Kind.FINAL` is upper-case and kept as text when the class has no such field).
        return None, None, (value.value.id, value.attr), None
    literal = _literal(value)
    if literal is not _NOT_LITERAL:
        return literal, None, None, None
    return f"<expr: {ast.unparse(value)}>", None, None, None


_NOT_LITERAL = object()


def _literal(node: ast.expr) -> Any:
    try:
        value = ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _NOT_LITERAL
    return jsonable(value)


def jsonable(value: Any) -> Any:
    """`value` as JSON (tuples and sets become lists); anything else becomes its repr."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else repr(value)
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((jsonable(v) for v in value), key=repr)
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: jsonable(v) for k, v in value.items()}
    return repr(value)


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else node.attr
    if isinstance(node, ast.Subscript):
        return _dotted(node.value)
    return ""


@dataclass(frozen=True)
class ClassSpec:
    """One class to read: where it usually lives, the group its fields go in, whether its bases' fields
    count too."""

    class_name: str
    path: str
    group: str
    inherit: bool = False


# The classes read per engine; a class that moved is still found by a search of the whole tree.
STATIC_SPECS: dict[str, tuple[str, tuple[ClassSpec, ...]]] = {
    "vllm": (
        "vllm",
        (
            ClassSpec("EngineArgs", "vllm/engine/arg_utils.py", "engine"),
            ClassSpec("SamplingParams", "vllm/sampling_params.py", "sampling"),
        ),
    ),
    "trtllm": (
        "tensorrt_llm",
        (
            ClassSpec("BaseLlmArgs", "tensorrt_llm/llmapi/llm_args.py", "llm", inherit=True),
            ClassSpec("TorchLlmArgs", "tensorrt_llm/llmapi/llm_args.py", "llm.pytorch"),
            ClassSpec("TrtLlmArgs", "tensorrt_llm/llmapi/llm_args.py", "llm.tensorrt"),
            ClassSpec("KvCacheConfig", "tensorrt_llm/llmapi/llm_args.py", "kv_cache_config", inherit=True),
            ClassSpec("BuildConfig", "tensorrt_llm/builder.py", "build_config", inherit=True),
            ClassSpec("SamplingParams", "tensorrt_llm/sampling_params.py", "sampling", inherit=True),
        ),
    ),
}

# Helpers for where vLLM's EngineArgs defaults point (ModelConfig.x, CacheConfig.x, ...).
_PREFER_EXTRA = {"vllm": ("vllm/config/__init__.py",), "trtllm": ()}


def discover_static(backend: str, location: str | Path) -> tuple[str | None, list[str], list[dict[str, Any]]]:
    """(engine version, files read, parameters) of `backend` from the wheel or source tree at `location`."""
    if backend not in STATIC_SPECS:
        raise SourceError(f"no static discovery for {backend!r} (known: {', '.join(STATIC_SPECS)})")
    package, specs = STATIC_SPECS[backend]
    tree = SourceTree(location)
    if tree._resolve(f"{package}/__init__.py") is None:
        raise SourceError(f"{location} holds no {package}/ package (expected {package}/__init__.py)")
    spec_names = frozenset(s.class_name for s in specs)
    parameters: list[dict[str, Any]] = []
    files: list[str] = []
    for spec in specs:
        prefer = (spec.path, *_PREFER_EXTRA.get(backend, ()))
        stop = spec_names - {spec.class_name}
        fields = tree.class_fields(spec.class_name, prefer, inherit=spec.inherit, stop=stop)
        info = tree.find_class(spec.class_name, prefer)
        relpath = info.path if info else spec.path
        files.append(relpath[relpath.find(package + "/") :] if package + "/" in relpath else relpath)
        for f in fields:
            parameters.append(
                {
                    "name": f.name,
                    "group": spec.group,
                    "type": f.type,
                    "default": jsonable(f.default) if f.default is not None else None,
                    "doc": f.doc,
                    "source": spec.class_name,
                }
            )
    return tree.version(package), sorted(set(files)), parameters
