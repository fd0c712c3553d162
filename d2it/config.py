"""Load, override and validate configs against the schema Snakemake validates with."""
from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import jsonschema
import yaml

from d2it.errors import D2itError

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


def _with_defaults(cls):
    """A validator that fills in each property's schema default before validating it; an object's
    default fills, key by key, what the config's object leaves out."""
    check_properties = cls.VALIDATORS["properties"]

    def properties(validator, props, instance, schema):
        if isinstance(instance, dict):
            for key, sub in props.items():
                if "default" not in sub:
                    continue
                default = sub["default"]
                if key not in instance:
                    instance[key] = copy.deepcopy(default)
                elif isinstance(default, dict) and isinstance(instance[key], dict):
                    for k, v in default.items():  # an object's default fills the keys left out
                        instance[key].setdefault(k, copy.deepcopy(v))
        yield from check_properties(validator, props, instance, schema)

    return jsonschema.validators.extend(cls, {"properties": properties})


def _inline_refs(node, defs):
    """Replace local {"$ref": "#/$defs/x", ...} by the definition updated with the keys beside the
    reference (e.g. its own default), so defaults inside it get filled."""
    if isinstance(node, dict):
        if "$ref" in node:
            here = {k: v for k, v in node.items() if k != "$ref"}
            target = copy.deepcopy(defs[node["$ref"].removeprefix("#/$defs/")])
            return _inline_refs(target | here, defs)
        return {k: _inline_refs(v, defs) for k, v in node.items()}
    return [_inline_refs(v, defs) for v in node] if isinstance(node, list) else node


_Validator = _with_defaults(jsonschema.Draft202012Validator)
_RAW_SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
_SCHEMA = _inline_refs({k: v for k, v in _RAW_SCHEMA.items() if k != "$defs"},
                       _RAW_SCHEMA.get("$defs", {}))


def validate(config: dict, source: str = "config") -> dict:
    """Fill defaults in place and raise one D2itError naming the first bad key and value."""
    errors = sorted(_Validator(_SCHEMA).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise D2itError(f"{source}: {where}: {e.message}")
    _check_consistency(config, source)
    return config


def _check_consistency(config: dict, source: str) -> None:
    # the preset's fine factor ties the grain region to the DVAE
    from d2it.models.dvae import PRESETS

    grain, preset = config["grain"], config["dvae"]["preset"]
    factor = PRESETS[preset]["fine_factor"]
    if grain["region"] != 2 * factor:
        raise D2itError(f"{source}: grain.region = {grain['region']} "
                        "must be one coarse latent cell, "
                        f"2 x the fine factor {factor} of dvae.preset {preset!r}")
    synth = config["data"]["synth"]
    if synth is not None and synth["radius"][0] > synth["radius"][1]:
        raise D2itError(f"{source}: data.synth.radius = {synth['radius']}: low above high")
    if config["data"]["resolution"] % grain["region"]:
        raise D2itError(f"{source}: data.resolution = {config['data']['resolution']} is not a "
                        f"multiple of grain.region = {grain['region']}")


def set_key(config: dict, dotted: str, value, source: str = "--set") -> None:
    """Override one dotted key. Its parent must exist; a new leaf is left to the schema to accept
    or name (e.g. a row's `seeds`, which has no default)."""
    node, parts = config, dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node, dict) or part not in node:
            raise D2itError(f"{source}: unknown config key {dotted!r}")
        node = node[part]
    if not isinstance(node, dict):
        raise D2itError(f"{source}: unknown config key {dotted!r}")
    node[parts[-1]] = value


def source(path: str | Path, overrides: list[str] = ()) -> str:
    """How errors name a config: its file, with the overrides given."""
    return f"{path} with --set {' '.join(overrides)}" if overrides else str(path)


def load(path: str | Path, overrides: list[str] = ()) -> dict:
    """Read a YAML config, apply `key=value` overrides (values parsed as YAML), validate."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise D2itError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise D2itError(f"{path}: not valid YAML ({where}{problem})") from None
    if not isinstance(config, dict):
        raise D2itError(f"{path}: top level must be a mapping")
    # YAML aliases share objects: unshare them, so --set changes one key.
    config = json.loads(json.dumps(config))
    validate(config, str(path))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise D2itError(f"--set {item!r}: expected key=value")
        set_key(config, key, override_value(item, value))
    return validate(config, source(path, overrides))


FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def override_value(item: str, text: str):
    """The value of `--set key=value` as YAML reads it, except that a number as a person types it
    is one: YAML 1.1 reads 1e-3 (no dot) as a string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or type(e).__name__
        raise D2itError(f"--set {item}: the value is not valid YAML ({problem})") from None
    if isinstance(value, str) and FLOAT.fullmatch(text.strip()):
        return float(text)
    return value


def digest(obj) -> str:
    """sha256 of the canonical JSON form: identifies a run's configuration."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True,
                                     separators=(",", ":")).encode()).hexdigest()
