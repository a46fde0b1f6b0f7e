"""The configuration reference and the JSON Schemas, written from the schema's own fields.

`python -m fed_a2v.config.reference --write` regenerates docs/configuration.md,
docs/experiment.schema.json (an experiment file) and docs/node.schema.json (a node's own file)
from fed_a2v.config.schema: each field's type hint, default, rule and `doc`. `--check` exits 1
naming the files that differ; tests/test_config_reference.py runs the same comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

from fed_a2v.config.schema import SCHEMA_KEY, Config, NodeConfig
from fed_a2v.config.upstream_keys import METADATA_KEYS

log = logging.getLogger(__name__)

DOCS = Path(__file__).resolve().parents[2] / "docs"
REFERENCE, EXPERIMENT_SCHEMA, NODE_SCHEMA = ("configuration.md", "experiment.schema.json",
                                             "node.schema.json")
COMMAND = "python -m fed_a2v.config.reference --write"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
# Keys of the schema that mark upstream's format (fed_a2v.config.upstream.is_upstream): FedA2V's
# own files leave them out, so the JSON Schemas do too.
UPSTREAM_ONLY = frozenset({"federation.algorithm"})
NODE_ID = "^[0-9]+$"  # fed_a2v.config.parse: node ids are partition numbers
_JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string",
               type(None): "null"}
_PLURAL = {"integer": "integers", "number": "numbers", "boolean": "booleans", "string": "strings"}


# --- field facts -----------------------------------------------------------------------------


def _union_args(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _fields(cls: type) -> list[tuple[dataclasses.Field[Any], Any]]:
    """`(field, type hint)` of each field of dataclass `cls`, in order."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def _sections() -> list[tuple[dataclasses.Field[Any], type]]:
    """The experiment's sections that are dataclasses, in the order of `Config`."""
    return [(f, tp) for f, tp in _fields(Config) if dataclasses.is_dataclass(tp)]


def _comment_patterns() -> list[str]:
    """The loader's comment keys (fnmatch patterns of fed_a2v.config.upstream_keys) as
    ECMA-262 regular expressions."""
    out = []
    for key in METADATA_KEYS:
        body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in key.path)
        out.append(f"^{body}$")
    return out


def _sentence(text: str) -> str:
    """`text` as a sentence: a lower-case ASCII first letter raised, a full stop at the end."""
    if text[:1].isascii() and text[:1].islower():
        text = text[0].upper() + text[1:]
    return text if text.endswith(".") else f"{text}."


# --- JSON Schema -------------------------------------------------------------------------------


def _json_type(tp: Any) -> dict[str, Any]:
    """The JSON Schema of a type hint: int, float, bool, str, None, list[...], dict[str, ...]
    and unions of them."""
    args = _union_args(tp)
    if len(args) > 1:
        merged: dict[str, Any] = {}
        kinds: list[str] = []
        for arg in args:
            part = _json_type(arg)
            kind = part.pop("type")
            kinds.extend(kind if isinstance(kind, list) else [kind])
            merged.update(part)
        if "number" in kinds:  # an integer is a number already
            kinds = [k for k in kinds if k != "integer"]
        kinds = list(dict.fromkeys(kinds))
        return {"type": kinds[0] if len(kinds) == 1 else kinds, **merged}
    origin = typing.get_origin(tp)
    if origin is list:
        return {"type": "array", "items": _json_type(typing.get_args(tp)[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": _json_type(typing.get_args(tp)[1])}
    if tp not in _JSON_TYPES:
        raise TypeError(f"no JSON Schema type for {tp!r}")
    return {"type": _JSON_TYPES[tp]}


def _field_schema(f: dataclasses.Field[Any], tp: Any) -> dict[str, Any]:
    rule = f.metadata.get("rule", {})
    description = _sentence(f.metadata["doc"])
    if "shown_default" in f.metadata:
        description += " Default: " + _sentence(f.metadata["shown_default"])
    schema: dict[str, Any] = {"description": description, **_json_type(tp)}
    if "choices" in rule:
        nullable = type(None) in _union_args(tp)
        schema["enum"] = [*rule["choices"], *([None] if nullable else [])]
    if "pattern" in rule:
        schema["pattern"] = f"^(?:{rule['pattern']})$"
    for ours, theirs in (("min", "minimum"), ("max", "maximum"),
                         ("min_exclusive", "exclusiveMinimum")):
        if ours in rule:
            schema[theirs] = rule[ours]
    if "keys" in f.metadata:
        schema["propertyNames"] = {"enum": list(f.metadata["keys"])}
    schema["default"] = _default(f)
    return schema


def _object(cls: type, section: str = "", description: str = "") -> dict[str, Any]:
    """A dataclass as a JSON object: its fields, comment keys, nothing else."""
    properties = {f.name: _field_schema(f, tp) for f, tp in _fields(cls)
                  if f"{section}.{f.name}" not in UPSTREAM_ONLY}
    schema: dict[str, Any] = {"type": "object"}
    if description:
        schema["description"] = description
    return {**schema, "properties": properties,
            "patternProperties": {p: {} for p in _comment_patterns()},
            "additionalProperties": False}


def _schema_key(what: str, example: str) -> dict[str, Any]:
    return {"description": f"The JSON Schema of {what}, for editors (e.g. \"{example}\", "
                           "relative to the file); the loader ignores it.",
            "type": "string"}


def _generated_note() -> str:
    return (f"Generated from fed_a2v/config/schema.py by `{COMMAND}`; edit the field docs there "
            "and regenerate.")


def node_entry_schema() -> dict[str, Any]:
    """One `nodes` entry."""
    return _object(NodeConfig, "nodes.*", " ".join((NodeConfig.__doc__ or "").split()))


def experiment_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of an experiment file in FedA2V's own format."""
    docs = {f.name: _sentence(f.metadata["doc"]) for f, _ in _fields(Config)}
    properties: dict[str, Any] = {
        SCHEMA_KEY: _schema_key("this experiment file", f"../docs/{EXPERIMENT_SCHEMA}")}
    for f, tp in _fields(Config):
        if dataclasses.is_dataclass(tp):
            properties[f.name] = _object(tp, f.name, docs[f.name])
    properties["nodes"] = {
        "type": "object", "description": docs["nodes"],
        "patternProperties": {NODE_ID: node_entry_schema(),
                              **{p: {} for p in _comment_patterns()}},
        "additionalProperties": {"type": "string",
                                 "description": "A comment between the nodes (ignored)."},
        "default": {},
    }
    return {
        "$schema": DRAFT,
        "$comment": _generated_note(),
        "title": "FedA2V experiment",
        "description": (
            "An experiment file in FedA2V's own format (docs/configuration.md). Every section "
            "and key is optional. Upstream's files (with federation.algorithm or a model "
            "section) and upstream's keys are read too, translated (docs/upstream-config.md), "
            "but are not described here. `fed-a2v validate` also checks the rules that span "
            "keys."),
        "type": "object",
        "properties": properties,
        "patternProperties": {p: {} for p in _comment_patterns()},
        "additionalProperties": False,
    }


def node_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a node's own file (the shape of one `nodes` entry)."""
    entry = node_entry_schema()
    return {
        "$schema": DRAFT,
        "$comment": _generated_note(),
        "title": "FedA2V node file",
        "description": (
            "A node's own JSON file (a SuperNode's --node-config \"node-config='node.json'\"), "
            "the shape of one `nodes` entry of an experiment (docs/configuration.md). "
            + entry.pop("description")),
        "type": "object",
        "properties": {SCHEMA_KEY: _schema_key("this node file", f"../../docs/{NODE_SCHEMA}"),
                       **entry["properties"]},
        "patternProperties": entry["patternProperties"],
        "additionalProperties": False,
    }


# --- Markdown ----------------------------------------------------------------------------------


def _type_text(tp: Any) -> str:
    schema = _json_type(tp)
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    words = []
    for kind in kinds:
        if kind == "array":
            item = schema["items"]["type"]
            words.append(f"list of {_PLURAL.get(item, item)}")
        elif kind == "object":
            value = schema["additionalProperties"]["type"]
            words.append(f"object of {_PLURAL.get(value, value)}")
        else:
            words.append(kind)
    return " or ".join(words)


def _allowed_text(f: dataclasses.Field[Any]) -> str:
    rule, parts = f.metadata.get("rule", {}), []
    if "choices" in rule:
        parts.append(", ".join(f"`{json.dumps(c)}`" for c in rule["choices"]))
    if "pattern" in rule:
        parts.append(", ".join(f"`{p}`" for p in rule["shown"].split(", ")))
    for key, sign in (("min", "≥"), ("min_exclusive", ">"), ("max", "≤")):
        if key in rule:
            parts.append(f"{sign} {rule[key]:g}")
    if "keys" in f.metadata:
        parts.append("keys: " + ", ".join(f"`{k}`" for k in f.metadata["keys"]))
    return ", ".join(parts)


def _default_text(f: dataclasses.Field[Any]) -> str:
    if "shown_default" in f.metadata:
        return f.metadata["shown_default"]
    return f"`{json.dumps(_default(f), ensure_ascii=False)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(cls: type, prefix: str) -> list[str]:
    lines = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for f, tp in _fields(cls):
        cells = [f"`{prefix}{f.name}`", _type_text(tp), _default_text(f), _allowed_text(f),
                 f.metadata["doc"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def markdown() -> str:
    """docs/configuration.md."""
    names = [f.name for f, _ in _fields(Config)]
    docs = {f.name: f.metadata["doc"] for f, _ in _fields(Config)}
    comments = ", ".join(f"`{k.path}`" for k in METADATA_KEYS)
    lines = [
        "# Configuration reference",
        "",
        f"<!-- {_generated_note()} `--check` says whether this file is current; a test fails "
        "when it is not. -->",
        "",
        "Every key of an experiment file and of a node's own file: its type, default, allowed "
        "values and meaning, generated from the config's own definitions "
        "(`fed_a2v/config/schema.py`) together with the JSON Schemas "
        f"[`{EXPERIMENT_SCHEMA}`]({EXPERIMENT_SCHEMA}) and [`{NODE_SCHEMA}`]({NODE_SCHEMA}). "
        "How the pieces fit together (nodes, overrides, strategies, differential privacy) and "
        "how to point an editor at the schemas: the [configuration guide]"
        "(configuration-guide.md); the upstream research code's files: [upstream experiments]"
        "(upstream.md).",
        "",
        "One JSON file per experiment, with the sections "
        + ", ".join(f"`{n}`" for n in names[:-1]) + f" and `{names[-1]}`. Every section and "
        "key is optional and falls back to its default. Unknown keys and bad values are "
        "rejected with the file, the key path and what is allowed (close spellings are "
        "suggested); `fed-a2v validate` also checks the rules that span keys. Comment keys ("
        f"{comments}) are ignored anywhere in a file, and so is a `\"{SCHEMA_KEY}\"` key at the "
        "top of an experiment or node file (an editor's pointer to the JSON Schema). A file "
        "with `federation.algorithm` or a `model` section is upstream's format, translated as "
        "[upstream-config.md](upstream-config.md) says; upstream's keys in FedA2V's own files "
        "are read the same way. The JSON Schemas describe FedA2V's own format only.",
        "",
        "A default in backticks is the JSON value; one in words is worked out when the config "
        "loads. *Allowed* lists the choices and bounds checked when the file is read.",
        "",
        *(f"- [`{n}`](#{n}): {docs[n]}" for n in names),
        "",
    ]
    for f, tp in _sections():
        lines += [f"## `{f.name}`", "", _sentence(docs[f.name]), "",
                  *_table(tp, f"{f.name}."), ""]
    lines += [
        "## `nodes`", "",
        _sentence(docs["nodes"]) + " A node id is a number "
        "written as a string; a string in place of an entry is a comment. A node "
        "started by a SuperNode with `--node-config \"node-config='path/to/node.json'\"` "
        f"reads its own file with the same keys ([`{NODE_SCHEMA}`]({NODE_SCHEMA})). Unset keys "
        "take the experiment's value, named under *default*.", "",
        *_table(NodeConfig, ""), "",
    ]
    return "\n".join(_wrap(line) for line in lines)


def _wrap(line: str, width: int = 100) -> str:
    """A prose line wrapped as the other docs are; headings and table rows as they are."""
    if line.startswith(("#", "|")) or len(line) <= width:
        return line
    indent = "  " if line.startswith("- ") else ""
    return textwrap.fill(line, width, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False)


# --- the files ---------------------------------------------------------------------------------


def _json_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def generated() -> dict[str, str]:
    """File name under docs/ -> its generated text."""
    return {REFERENCE: markdown(), EXPERIMENT_SCHEMA: _json_text(experiment_schema()),
            NODE_SCHEMA: _json_text(node_schema())}


def stale(docs: Path = DOCS) -> list[Path]:
    """The generated files under `docs` that are missing or differ from what the schema gives."""
    out = []
    for name, text in generated().items():
        path = docs / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            out.append(path)
    return out


def write(docs: Path = DOCS) -> list[Path]:
    """Write the stale files under `docs`; returns them."""
    texts = generated()
    changed = stale(docs)
    for path in changed:
        path.write_text(texts[path.name], encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fed_a2v.config.reference",
                                     description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate the files")
    mode.add_argument("--check", action="store_true",
                      help="exit 1, naming them, if the files differ from the schema")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the docs folder (default: "
                        "the repository's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.write:
        changed = write(args.docs)
        for path in changed:
            log.info("wrote %s", path)
        if not changed:
            log.info("%s: up to date", args.docs)
        return 0
    out_of_date = stale(args.docs)
    for path in out_of_date:
        log.error("%s is not what fed_a2v/config/schema.py gives (missing or stale); "
                  "regenerate: %s", path, COMMAND)
    return 1 if out_of_date else 0


if __name__ == "__main__":
    sys.exit(main())
