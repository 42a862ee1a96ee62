"""How every job reads its config: ``--config FILE.yaml``, then flags, into the job's pydantic model.

    cfg = load_config(TrainConfig, argv, prog="ecgvlm train", doc=__doc__)

The flags are the model's fields, made by pydantic-settings' CLI (argparse underneath): ``--num-workers 2``;
nested fields with dots (``--app.batching.max-batch-size 4``); dicts and lists as JSON or YAML flow
(``--tiny '{image_size: 448}'``, ``--betas '[0.9, 0.95]'``), one key of a dict field with a dot as well
(``--tiny.image-size 448``); booleans as ``--flag``, ``--no-flag`` or ``--flag true|false``; ``null`` for None.
A flag overrides the YAML, nested dicts merging key by key. ``--help`` lists every field with its description
and default. A mistyped flag or a bad value ends the job with one line that names it (and, for a flag, the
closest valid one), exit status 2, no traceback.

pydantic-settings rather than tyro: it reads our pydantic models as they are (descriptions, defaults,
validators, ``extra="forbid"``), and its argparse parser lets one subclass own every error line.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
import textwrap
import types
import typing
from typing import Any, Callable

from pydantic import BaseModel, ValidationError

BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0", "null", "none"}
EPILOG = ("--config FILE.yaml gives any of these fields; flags override it. Nested fields: --a.b value. "
          "Booleans: --flag, --no-flag or --flag true|false. Dicts and lists: JSON or YAML flow, e.g. '{k: 1}'. "
          "-v (--verbose) shows Ray's own log lines, quiet by default.")


def kebab(name: str) -> str:
    return name.replace("_", "-")


def _kind(annotation) -> str:
    """bool | model | dict | strlist (a text or a list of texts) | list | value."""
    origin, args = typing.get_origin(annotation), [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        if str in args and any(typing.get_origin(a) in (list, tuple) for a in args):
            return "strlist"
        return _kind(args[0]) if len(args) == 1 else "value"
    if annotation is bool:
        return "bool"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model"
    return {dict: "dict", list: "list", tuple: "list"}.get(origin, "value")


def flag_kinds(model: type[BaseModel], prefix: str = "") -> dict[str, tuple[str, tuple[str, ...]]]:
    """``{"app.batching.enabled": ("bool", ("app", "batching", "enabled")), ...}``: every flag (kebab, dotted)
    with its kind and the field path it sets."""
    out = {}
    for name, field in model.model_fields.items():
        flag, kind = prefix + kebab(name), _kind(field.annotation)
        path = tuple(p.replace("-", "_") for p in flag.split("."))
        out[flag] = (kind, path)
        if kind == "model":
            inner = next(a for a in (field.annotation, *typing.get_args(field.annotation))
                         if isinstance(a, type) and issubclass(a, BaseModel))
            out.update(flag_kinds(inner, flag + "."))
    return out


def _structured(text: str) -> Any:
    """A flag's text read as JSON, else as YAML (so ``{image_size: 448}`` and ``[a, b]`` both work)."""
    import yaml

    try:
        return json.loads(text)
    except ValueError:
        return yaml.safe_load(text)


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``; where both hold a dict, merged key by key."""
    out = dict(base)
    for key, value in top.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def split_argv(argv: list[str], kinds: dict, aliases: dict[str, str]) -> tuple[str | None, list[str], dict]:
    """``(config file, flags for argparse, values set here)``: ``--config`` taken out; old spellings
    (``aliases``: old flag -> field flag) mapped; booleans given bare or as ``--no-x`` written out; a key of a dict
    field (``--tiny.image-size 448``) and a text-or-list field set directly; YAML flow turned into JSON."""
    config, out, direct, i = None, [], {}, 0
    while i < len(argv):
        token = argv[i]
        name, eq, value = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        if not name:
            out.append(token)
            i += 1
            continue
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        takes_next = not eq and nxt is not None and not nxt.startswith("--")
        value = value if eq else (nxt if takes_next else None)
        step = 1 if eq or not takes_next else 2
        flag = aliases.get(name, name)
        if flag not in kinds and flag.startswith("no-") and kinds.get(aliases.get(flag[3:], flag[3:]), ("",))[0] == "bool":
            out += ["--" + aliases.get(flag[3:], flag[3:]), "false"]
            i += 1
            continue
        if name == "config":
            config = value
        elif kinds.get(flag, ("",))[0] == "bool":
            if value is not None and value.lower() in BOOL_WORDS:
                out += ["--" + flag, value]
            else:  # a bare flag: true, and the next token is the next flag's
                out += ["--" + flag, "true"]
                step = 1
        elif kinds.get(flag, ("",))[0] == "strlist" and value is not None:
            _set(direct, kinds[flag][1], _structured(value) if value.lstrip().startswith("[") else value)
        elif (head := _dict_head(flag, kinds)) and value is not None:
            path = kinds[head][1] + tuple(p.replace("-", "_") for p in flag[len(head) + 1:].split("."))
            _set(direct, path, _structured(value))
        elif value is not None and kinds.get(flag, ("",))[0] in ("dict", "list", "model") and value[:1] in "{[":
            out += ["--" + flag, json.dumps(_structured(value))]
        else:
            out += ["--" + flag] + ([value] if value is not None else [])
        i += step
    # pydantic-settings names a one-letter field -x; --x (as in --n 2000) is the same flag
    return config, [f"-{t[2:]}" if t.startswith("--") and len(t) == 3 else t for t in out], direct


def _dict_head(flag: str, kinds: dict) -> str | None:
    parts = flag.split(".")
    for j in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:j])
        if kinds.get(head, ("",))[0] == "dict":
            return head
    return None


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line: the unknown flag and the closest valid one; exit status 2."""

    def error(self, message: str):
        match = re.match(r"unrecognized arguments: (\S+)", message)
        if match and match.group(1).startswith("-"):
            flag = match.group(1).split("=")[0]
            flags = [s for action in self._actions for s in action.option_strings if s.startswith("--")]
            close = difflib.get_close_matches(flag, flags, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]}?" if close else ""
            message = f"unknown flag {flag}{hint} (--help lists every flag)"
        fail(self.prog, message)


def fail(prog: str, *lines: str):
    for line in lines:
        print(f"{prog}: {line}", file=sys.stderr)
    raise SystemExit(2)


def _error_lines(err: ValidationError, kinds: dict, config: str | None) -> list[str]:
    fields = {path: flag for flag, (_, path) in kinds.items()}
    lines = []
    for e in err.errors():
        path = tuple(str(p) for p in e["loc"])
        flag = "--" + ".".join(kebab(p) for p in path) if path else ""
        if e["type"] == "missing":
            lines.append(f"{flag} is required (a flag, or a key of --config)")
        elif e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(".".join(path), [".".join(p) for p in fields], n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]}?" if close else ""
            lines.append(f"unknown field {'.'.join(path)!r} in {config or 'the config'}{hint}")
        else:
            shown = repr(e.get("input"))[:80]
            lines.append(f"{flag or 'config'}: {e['msg']} (got {shown})")
    return lines


def _usage(doc: str) -> str:
    """The user's part of a job's docstring: its first line and its example commands, without RST marks."""
    paragraphs = [p for p in doc.strip().split("\n\n") if p.strip()]
    keep = paragraphs[:1] + [p for p in paragraphs[1:2] if p.startswith("    ")]
    return "\n\n".join(keep).replace("``", "")


def _metavar(annotation, kind: str) -> str:
    if kind == "bool":
        return " [true|false]"
    if kind in ("dict", "list", "model"):
        return " JSON"
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    if typing.get_origin(annotation) is typing.Literal or typing.get_origin(args[0]) is typing.Literal:
        values = typing.get_args(annotation if typing.get_origin(annotation) is typing.Literal else args[0])
        return " {" + ",".join(str(v) for v in values) + "}"
    return {int: " INT", float: " NUMBER"}.get(args[0], " TEXT")


def _default(field) -> str:
    """`` (default: X)`` once: nothing where the description already says it, for None, or for an empty dict."""
    desc = (field.description or "").lower()
    if field.is_required():
        return " (required)"
    value = field.get_default(call_default_factory=True)
    if value is None or value in ({}, [], "") or isinstance(value, BaseModel) or "default" in desc:
        return ""
    if isinstance(value, bool):
        value = str(value).lower()
    return f" (default: {value})"


def _fields(model: type[BaseModel], prefix: str = ""):
    """``(flag, field, kind, declared on)`` for every field, nested models' fields after their own flag."""
    for name, field in model.model_fields.items():
        flag, kind = prefix + kebab(name), _kind(field.annotation)
        owner = next((c for c in reversed(model.__mro__) if name in getattr(c, "__annotations__", {})), model)
        yield flag, field, kind, owner
        if kind == "model":
            inner = next(a for a in (field.annotation, *typing.get_args(field.annotation))
                         if isinstance(a, type) and issubclass(a, BaseModel))
            yield from _fields(inner, flag + ".")


def help_text(model: type[BaseModel], *, prog: str, doc: str = "", main: tuple[str, ...] = (),
              endpoint: tuple[str, ...] = ()) -> str:
    """``--help`` for users: the job's examples, then its main flags (``main``, in that order), then the others,
    then the ones for OpenAI-compatible endpoints only (``endpoint``, and every field a class named ``Endpoint*``
    declares); each flag's description with its default once.

    Example: ``help_text(PrepareConfig, prog="ecgvlm prepare", main=("source", "out"))``.
    """
    sections: dict[str, list[str]] = {"main options": [], "other options": [], "endpoint options": []}
    rows = {}
    for flag, field, kind, owner in _fields(model):
        desc = " ".join((field.description or "").split())
        line = f"  --{flag}{_metavar(field.annotation, kind)}"
        text = f"{desc}{_default(field)}".strip()
        text = ("\n" + " " * 35).join(textwrap.wrap(text, 84))
        line = f"{line:<34} {text}" if len(line) < 34 else f"{line}\n{'':<34} {text}"
        only = flag in map(kebab, endpoint) or (owner is not model and owner.__name__.startswith("Endpoint"))
        rows[flag] = (line, "endpoint options" if only else "other options")
    for flag in main:
        if kebab(flag) in rows:
            sections["main options"].append(rows.pop(kebab(flag))[0])
    for line, section in rows.values():
        sections[section].append(line)
    titles = {"main options": "main options", "other options": "other options",
              "endpoint options": "options for --model openai:NAME (an OpenAI-compatible endpoint) only"}
    out = [f"usage: {prog} [--config FILE.yaml] [options]", "", _usage(doc) if doc else "", "",
           f"  {'--config FILE':<32} YAML file with any of the fields below; flags override it"]
    for key, lines in sections.items():
        if lines:
            out += ["", f"{titles[key]}:"] + lines
    return "\n".join(out + ["", EPILOG])


def load_config(model: type[BaseModel], argv: list[str] | None, *, prog: str, doc: str = "",
                aliases: dict[str, str] | None = None, read_yaml: Callable[[str], dict] | None = None,
                main: tuple[str, ...] = (), endpoint: tuple[str, ...] = ()):
    """The job's config from ``--config FILE`` (``read_yaml``: its fields, by default the YAML mapping itself)
    and flags (``aliases``: old flag -> field flag, both kebab without ``--``, e.g. ``{"json": "json-out"}``).
    ``--help`` prints :func:`help_text` (``main``: the fields listed first; ``endpoint``: fields for
    ``--model openai:NAME`` only) and exits 0; ``-v`` sets
    ``ECGVLM_VERBOSE=1`` (the jobs then leave Ray's own log lines on)."""
    from pydantic_settings import BaseSettings, CliSettingsSource, SettingsConfigDict, SettingsError

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(model, prog=prog, doc=doc, main=main, endpoint=endpoint))
        raise SystemExit(0)
    if any(a in ("-v", "--verbose") for a in argv):  # every job's: Ray's own log lines back (pipelines.launch)
        os.environ["ECGVLM_VERBOSE"] = "1"
        argv = [a for a in argv if a not in ("-v", "--verbose")]
    kinds = flag_kinds(model)
    config, flags, direct = split_argv(argv, kinds, aliases or {})
    parser = _Parser(prog=prog, description=doc, epilog=EPILOG, allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="YAML file with any of the fields below")
    settings = type(model.__name__, (BaseSettings, model), {"model_config": SettingsConfigDict(extra="forbid")})
    try:
        source = CliSettingsSource(settings, root_parser=parser, cli_prog_name=prog, cli_kebab_case=True,
                                   cli_enforce_required=False, cli_hide_none_type=True)
        given = source(args=flags)()
    except SettingsError as err:
        fail(prog, str(err).splitlines()[0])
    given.pop("config", None)
    values: dict = {}
    if config:
        import yaml

        try:
            values = read_yaml(config) if read_yaml else _yaml_mapping(config)
        except (OSError, ValueError, yaml.YAMLError) as err:
            fail(prog, f"--config {config}: {err}")
    try:
        return model.model_validate(merge(merge(values, given), direct))
    except ValidationError as err:
        fail(prog, *_error_lines(err, kinds, config))


def _yaml_mapping(path: str) -> dict:
    import yaml

    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    if not isinstance(doc, dict):
        raise ValueError("not a YAML mapping of field: value")
    return doc


def error_exit(job: str, failed: int, attempted: int, max_rate: float) -> int:
    """The exit status of a job that wrote everything: 1 (and one line saying why) when more than ``max_rate``
    of the ``attempted`` rows failed, else 0."""
    if attempted and failed / attempted > max_rate:
        print(f"{job}: {failed} of {attempted} rows failed ({failed / attempted:.0%}), more than --max-error-rate "
              f"{max_rate:g}; everything is written, the failures are listed with their errors", file=sys.stderr)
        return 1
    return 0
