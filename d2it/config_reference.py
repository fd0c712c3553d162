"""config/README.md: every key of the study schema with its values, default and meaning, written
from d2it/config.schema.yaml so the reference cannot drift from what is validated
(`d2it study keys > config/README.md`; a test compares the two)."""
from __future__ import annotations

import json
import textwrap

from d2it.config import _RAW_SCHEMA

HEADER = """# Study config keys

Every key of a study config (`config/*.yaml`), from `d2it/config.schema.yaml`, which Snakemake and
every `d2it` command validate against. Unknown keys are errors; a key left out takes its default
(the paper-scale choice; `config/cpu.yaml` scales the study down). `--set key=value` overrides one
key on any command, e.g. `--set sampling.steps=100`. `d2it study plan` prints the rows as resolved.
Regenerate this file with `d2it study keys > config/README.md`.
"""

# Sections whose keys, where not described, set a key of another section for themselves.
OVERRIDES = {"tables": "sampling", "figures.fig5": "sampling", "figures.fig6": "sampling",
             "recon": "sampling", "row": "sampling", "figure": "sampling",
             "train_overrides": "train"}
BOUNDS = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"),
          ("exclusiveMaximum", "<"))


def _ref_name(node: dict) -> str | None:
    return node["$ref"].removeprefix("#/$defs/") if "$ref" in node else None


def _kind(node: dict) -> str:
    """The values a key takes, in words: `integer ≥ 1`, `ddpm | ddim`, `list of number`..."""
    if ref := _ref_name(node):
        return f"[{ref}](#{ref.replace('_', '-')})"
    if "enum" in node:
        return " | ".join(json.dumps(v) for v in node["enum"])
    if "const" in node:
        return json.dumps(node["const"])
    if "oneOf" in node:
        return " or ".join(_kind(alt) for alt in node["oneOf"])
    types = node.get("type", "any")
    words = " or ".join(types) if isinstance(types, list) else types
    bounds = [f"{sign} {node[key]}" for key, sign in BOUNDS if key in node]
    if bounds:
        words += " " + ", ".join(bounds)
    if "items" in node:
        words += f" of {_kind(node['items'])}"
    if isinstance(node.get("additionalProperties"), dict):
        words += f": name → {_kind(node['additionalProperties'])}"
    return words


def _default(node: dict) -> str:
    if "default" not in node:
        return ""
    value = node["default"]
    return "" if value == {} else f"`{json.dumps(value, ensure_ascii=False)}`"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _paragraph(text: str) -> str:
    return textwrap.fill(" ".join(text.split()), 100)


def _description(key: str, node: dict, inherit: str | None) -> str:
    """A key's own description, else its definition's, else that of the key it overrides."""
    if "description" in node:
        return node["description"]
    if ref := _ref_name(node):
        return _RAW_SCHEMA["$defs"][ref].get("description", "")
    if "const" in node:
        return "selects this kind's keys"
    if inherit:
        base = _RAW_SCHEMA["properties"][inherit]
        base = _RAW_SCHEMA["$defs"].get(_ref_name(base), base)["properties"].get(key, {})
        return f"its own `{inherit}.{key}`" + (f": {_description(key, base, None)}"
                                              if _description(key, base, None) else "")
    return ""


def _rows(node: dict, prefix: str, inherit: str | None = None) -> list[str]:
    """Table rows of the keys under `node`, nested objects flattened to dotted names; keys
    without a description that override a key of section `inherit` say so."""
    rows = []
    for key, sub in node.get("properties", {}).items():
        name = f"{prefix}{key}"
        rows.append(f"| `{name}` | {_cell(_kind(sub))} | {_default(sub)} | "
                    f"{_cell(_description(key, sub, inherit))} |")
        if "properties" in sub:
            rows += _rows(sub, f"{name}.", OVERRIDES.get(name))
        for alt in sub.get("oneOf", []):
            if "properties" in alt:
                rows += _rows(alt, f"{name}.")
        named = sub.get("additionalProperties")
        if isinstance(named, dict) and "properties" in named:
            rows += _rows(named, f"{name}.<name>.", OVERRIDES.get(name))
    return rows


def _table(node: dict, inherit: str | None = None) -> list[str]:
    return ["| key | values | default | meaning |", "|---|---|---|---|",
            *_rows(node, "", inherit)]


def reference() -> str:
    """The Markdown reference of every key."""
    lines = [HEADER, "## Study", "", _paragraph(_RAW_SCHEMA["description"]), "",
             *_table(_RAW_SCHEMA)]
    for name, node in _RAW_SCHEMA["$defs"].items():
        lines += ["", f"## {name}", ""]
        if "description" in node:
            lines += [_paragraph(node["description"]), ""]
        if "properties" in node:
            lines += _table(node, OVERRIDES.get(name))
        else:
            lines.append(f"Values: {_cell(_kind(node))}.")
        for branch in node.get("allOf", []):
            kind = branch["if"]["properties"]["kind"]["const"]
            lines.append(f"- `kind: {kind}`: the keys of [{_ref_name(branch['then'])}]"
                         f"(#{_ref_name(branch['then']).replace('_', '-')})")
    return "\n".join(lines) + "\n"
