"""
Maintainer tooling: derive the option tables of :mod:`rigkit.hostdata.option_tables` from
the engines' own sources, statically (nothing is built or imported).

- llama-server: ``common/arg.cpp`` of llama.cpp, as vendored in the llama-cpp-python sdist
  that pins it (``vendor/llama.cpp/common/arg.cpp``). Every ``add_opt(common_arg(...))`` of
  ``common_params_parser_init`` is read: its spellings, negative spellings (the bool
  handler's second list), its handler's lambda parameters (arity: none or ``bool`` -> 0, one
  value -> 1, two -> 2), ``.set_examples``/``.set_excludes`` (kept when the server's parser
  keeps it: ``add_opt`` keeps an option of LLAMA_EXAMPLE_SERVER or LLAMA_EXAMPLE_COMMON not
  excluded from the server) and ``if (ex == LLAMA_EXAMPLE_SERVER)`` branches.
- vLLM: ``vllm serve``'s parser, read with :mod:`ast` from the wheel (see :func:`vllm_table`).
- SGLang: ``python3 -m sglang.launch_server``'s parser (``ServerArgs.add_cli_args``), read with
  :mod:`ast` from the wheel (see :func:`sglang_table`).

Regenerate for a new pin (then add it to ``LLAMA_SERVER_BUILDS``/``VLLM_VERSIONS`` and run
tests/test_engine_args.py, which regenerates every committed table and compares)::

    python -m rigkit.hostdata.option_tables.generate llama-server 0.3.36   # llama-cpp-python
    python -m rigkit.hostdata.option_tables.generate vllm 0.19.1
    python -m rigkit.hostdata.option_tables.generate sglang 0.5.12

The sdist comes through :func:`rigkit.sandbox.offline.fetch_llama_sdist` (sha256 checked
against PyPI), the wheel from ``pip download vllm==<version> --no-deps`` into the cache.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent

# --------------------------------------------------------------------------------------------
# llama-server: a small C++ tokenizer, enough for arg.cpp's common_arg(...) table.

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|//[^\n]*|/\*.*?\*/)
  | (?P<pp>^[ \t]*\#[^\n]*)
  | (?P<str>(?:u8|L|u|U)?"(?:\\.|[^"\\\n])*")
  | (?P<raw>R"(?P<delim>[^(\s]*)\(.*?\)(?P=delim)")
  | (?P<chr>'(?:\\.|[^'\\\n])*')
  | (?P<num>[0-9][0-9a-zA-Z_.']*)
  | (?P<id>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>::|->|&&|\|\||[-+*/%<>=!]=|<<|>>|\+\+|--|.)
    """,
    re.VERBOSE | re.DOTALL | re.MULTILINE,
)
_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "'": "'", "0": "\0", "r": "\r"}


def _tokens(source: str) -> list[tuple[str, str]]:
    """(kind, text) tokens, whitespace, comments and preprocessor lines dropped; a string
    token's text is its value."""
    out: list[tuple[str, str]] = []
    for m in _TOKEN.finditer(source):
        kind = m.lastgroup if m.lastgroup != "delim" else "raw"
        if kind in ("ws", "pp"):
            continue
        text = m.group(0)
        if kind == "str":
            body = text[text.index('"') + 1 : -1]
            text = re.sub(r"\\(.)", lambda e: _ESCAPES.get(e.group(1), e.group(1)), body)
        elif kind == "raw":
            kind, text = "str", text[text.index("(") + 1 : text.rindex(")")]
        out.append((kind or "op", text))
    return out


def _matching(toks: list[tuple[str, str]], i: int) -> int:
    """Index of the bracket closing the one at ``i``."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack = []
    for j in range(i, len(toks)):
        kind, text = toks[j]
        if kind != "op":
            continue
        if text in pairs:
            stack.append(pairs[text])
        elif stack and text == stack[-1]:
            stack.pop()
            if not stack:
                return j
    raise ValueError(f"unbalanced bracket at token {i}")


def _split_args(toks: list[tuple[str, str]], start: int, end: int) -> list[list[tuple[str, str]]]:
    """The comma-separated arguments between ``start`` and ``end`` (exclusive), at depth 0."""
    args: list[list[tuple[str, str]]] = [[]]
    i = start
    while i < end:
        kind, text = toks[i]
        if kind == "op" and text in "({[":
            j = _matching(toks, i)
            args[-1].extend(toks[i : j + 1])
            i = j + 1
            continue
        if kind == "op" and text == ",":
            args.append([])
        else:
            args[-1].append(toks[i])
        i += 1
    return [a for a in args if a]


def _string_list(arg: list[tuple[str, str]]) -> list[str] | None:
    """``{"-a", "--b"}`` as a list, else None."""
    if not (arg and arg[0] == ("op", "{") and arg[-1] == ("op", "}")):
        return None
    inner = arg[1:-1]
    if any(k not in ("str", "op") or (k == "op" and t != ",") for k, t in inner):
        return None
    return [t for k, t in inner if k == "str"]


def _lambda_params(arg: list[tuple[str, str]]) -> list[str] | None:
    """The parameter types of a ``[](common_params & params, TYPE v, ...)`` handler, else None."""
    if not (len(arg) > 2 and arg[0] == ("op", "[") and arg[1] == ("op", "]")):
        return None
    close = _matching(arg, 2)
    params = [" ".join(t for _, t in p) for p in _split_args(arg, 3, close)]
    return params[1:]  # the first is common_params &


def _handler_kind(params: list[str], body: str) -> tuple[int, str]:
    """Arity and value kind of a handler, as common_params_parse_ex calls it: ``handler_void``
    and ``handler_bool`` take no value (bool says which spelling, positive or ``args_neg``),
    ``handler_int`` one value through std::stoi, ``handler_string`` one, ``handler_str_str`` two."""
    if not params:
        return 0, "flag"
    if params == ["bool value"] or (len(params) == 1 and params[0].startswith("bool ")):
        return 0, "flag"
    if len(params) == 1 and params[0].startswith("int "):
        return 1, "int"
    if len(params) == 2:
        return 2, "text"
    name = params[0].split()[-1]
    whole = re.escape(name)
    # The handler converts the whole value: its kind (a value it splits stays text).
    if re.search(rf"json::parse\(\s*{whole}\s*\)", body):
        return 1, "json"
    if re.search(rf"std::sto(?:i|l|ul|ll|ull)\(\s*{whole}\s*\)", body):
        return 1, "int"
    if re.search(rf"std::sto(?:f|d)\(\s*{whole}\s*\)", body):
        return 1, "float"
    return 1, "text"


def _parser_init_body(toks: list[tuple[str, str]]) -> tuple[int, int]:
    for i in range(len(toks) - 2):
        if toks[i] == ("id", "common_params_parser_init") and toks[i + 1] == ("op", "("):
            close = _matching(toks, i + 1)
            if toks[close + 1] == ("op", "{"):
                return close + 1, _matching(toks, close + 1)
    raise ValueError("common_params_parser_init not found")


def _server_statements(toks: list[tuple[str, str]], start: int, end: int) -> Iterator[int]:
    """Indexes of the ``add_opt`` calls the server's parser runs, between ``start`` and
    ``end``: ``if (ex == LLAMA_EXAMPLE_X) {...} else {...}`` branches taken as for the server,
    any other ``if`` (a build feature such as RPC) taken as true."""
    i = start
    while i < end:
        tok = toks[i]
        if tok == ("id", "add_opt") and toks[i + 1] == ("op", "("):
            yield i
            i = _matching(toks, i + 1) + 1
            continue
        if tok == ("id", "if") and toks[i + 1] == ("op", "("):
            # An if / else if / else chain: the first branch taken runs.
            done = False
            while True:
                cond_end = _matching(toks, i + 1)
                cond = [t for _, t in toks[i + 2 : cond_end]]
                taken = True
                if len(cond) == 3 and cond[0] == "ex" and cond[1] in ("==", "!="):
                    taken = (cond[2] == "LLAMA_EXAMPLE_SERVER") == (cond[1] == "==")
                body_end = _matching(toks, cond_end + 1)
                if taken and not done:
                    yield from _server_statements(toks, cond_end + 2, body_end)
                    done = True
                i = body_end + 1
                if toks[i] == ("id", "else") and toks[i + 1] == ("id", "if"):
                    i += 1
                    continue
                if toks[i] == ("id", "else"):
                    else_end = _matching(toks, i + 1)
                    if not done:
                        yield from _server_statements(toks, i + 2, else_end)
                    i = else_end + 1
                break
            continue
        if tok == ("op", "{"):  # a nested block (e.g. a scope with local variables)
            j = _matching(toks, i)
            yield from _server_statements(toks, i + 1, j)
            i = j + 1
            continue
        i += 1


def _examples(toks: list[tuple[str, str]], start: int, end: int) -> dict[str, list[str]]:
    """The ``.set_examples({...})`` / ``.set_excludes({...})`` chained after a common_arg."""
    found: dict[str, list[str]] = {}
    i = start
    while i < end:
        if toks[i] == ("op", ".") and toks[i + 1][0] == "id" and toks[i + 2] == ("op", "("):
            close = _matching(toks, i + 2)
            found[toks[i + 1][1]] = [t for k, t in toks[i + 3 : close] if k == "id"]
            i = close + 1
        else:
            i += 1
    return found


def llama_server_options(arg_cpp: str) -> dict[str, dict[str, Any]]:
    """Every spelling llama-server's parser accepts -> canonical name, arity, kind."""
    toks = _tokens(arg_cpp)
    start, end = _parser_init_body(toks)
    options: dict[str, dict[str, Any]] = {}
    for at in _server_statements(toks, start + 1, end):
        outer_end = _matching(toks, at + 1)
        if toks[at + 2] != ("id", "common_arg") or toks[at + 3] != ("op", "("):
            raise ValueError(f"add_opt of something other than common_arg(...) at token {at}")
        inner_end = _matching(toks, at + 3)
        args = _split_args(toks, at + 4, inner_end)
        chain = _examples(toks, inner_end + 1, outer_end)
        examples = chain.get("set_examples", ["LLAMA_EXAMPLE_COMMON"])
        excludes = chain.get("set_excludes", [])
        # add_opt: in the example, or in COMMON (which every example but DOWNLOAD inherits).
        if not ({"LLAMA_EXAMPLE_SERVER", "LLAMA_EXAMPLE_COMMON"} & set(examples)) or "LLAMA_EXAMPLE_SERVER" in excludes:
            continue
        if "set_preset_only" in chain:  # never a command-line argument
            continue
        spellings = _string_list(args[0])
        if spellings is None:
            raise ValueError(f"common_arg without a literal list of spellings at token {at}")
        negatives = _string_list(args[1]) if len(args) > 1 else None
        params = _lambda_params(args[-1])
        if params is None:
            raise ValueError(f"{spellings}: handler is not a lambda")
        body = "".join(t for _, t in args[-1])
        arity, kind = _handler_kind(params, body)
        canonical = next((s for s in spellings if s.startswith("--")), spellings[0])
        for spelling in spellings:
            options[spelling] = {"canonical": canonical, "arity": arity, "kind": kind}
        for spelling in negatives or ():
            options[spelling] = {"canonical": canonical, "arity": 0, "kind": "flag", "negative": True}
    return dict(sorted(options.items()))


LLAMA_RULES = {
    # common_params_parse_ex: an argv word starting with "--" has every '_' replaced by '-',
    # then must be a key of arg_to_options (every args and args_neg spelling) exactly: no
    # '=' form, no prefixes, no case folding, no positionals ("invalid argument" otherwise).
    # A value is the next argv word, whatever it is.
    "underscore_to_dash": "long",
    "equals_form": False,
    "abbreviations": False,
    "positionals": False,
}


def llama_sdist_arg_cpp(version: str, cache: Path | None = None) -> tuple[str, str]:
    """(arg.cpp's text, the build tag) of the llama-cpp-python ``version`` sdist."""
    from rigkit.sandbox.offline import LLAMA_RELEASES, SDIST_VENDOR_DIR, default_cache_dir, fetch_llama_sdist

    sdist = fetch_llama_sdist(version, cache or default_cache_dir())
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(f"/{SDIST_VENDOR_DIR}/common/arg.cpp"))
        handle = tar.extractfile(member)
        assert handle is not None
        text = handle.read().decode()
    return text, f"b{LLAMA_RELEASES[version][0]}"


def llama_server_table(version: str, cache: Path | None = None) -> dict[str, Any]:
    text, tag = llama_sdist_arg_cpp(version, cache)
    return {
        "engine": "llama-server",
        "version": tag,
        "source": f"llama-cpp-python {version} sdist: vendor/llama.cpp/common/arg.cpp",
        "rules": LLAMA_RULES,
        "options": llama_server_options(text),
    }


# --------------------------------------------------------------------------------------------
# vLLM: `vllm serve`'s argparse parser, read with ast (importing vLLM needs torch).
#
# The parser (vllm/entrypoints/cli/serve.py ServeSubcommand.subparser_init) is
# make_arg_parser (vllm/entrypoints/openai/cli_args.py: model_tag, --headless,
# --api-server-count, --config, FrontendArgs.add_cli_args, AsyncEngineArgs.add_cli_args) plus
# --grpc. FrontendArgs registers one flag per dataclass field (`--{name with dashes}`,
# kwargs from get_kwargs, then _customize_cli_kwargs); EngineArgs.add_cli_args registers
# named flags with `**<group>_kwargs["field"]` from get_kwargs(<Config>). get_kwargs
# (arg_utils._compute_kwargs) turns a field's annotation into argparse kwargs: a dataclass ->
# JSON, bool -> BooleanOptionalAction (--x and --no-x), Literal -> choices (or metavar with
# str), tuple/list/set -> nargs ("+", or the tuple's length), int, float, dict -> JSON, else
# str; Optional adds nothing to the arity.

VLLM_FILES = (
    "vllm/engine/arg_utils.py",
    "vllm/entrypoints/openai/cli_args.py",
    "vllm/entrypoints/cli/serve.py",
    "vllm/utils/argparse_utils.py",
)
VLLM_TYPE_DIRS = ("vllm/config/", "vllm/entrypoints/openai/", "vllm/engine/", "vllm/lora/", "vllm/utils/")


class _Module:
    """The top-level classes and type aliases of the files read, by name."""

    def __init__(self, sources: dict[str, str]) -> None:
        import ast

        self.classes: dict[str, ast.ClassDef] = {}
        self.aliases: dict[str, ast.expr] = {}
        for text in sources.values():
            tree = ast.parse(text)
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    self.classes.setdefault(node.name, node)
                elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    self.aliases.setdefault(node.targets[0].id, node.value)
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                    self.aliases.setdefault(node.target.id, node.value)
                elif type(node).__name__ == "TypeAlias":  # `type X = ...` (Python 3.12)
                    self.aliases.setdefault(getattr(node, "name").id, getattr(node, "value"))  # noqa: B009 - no 3.11 type

    def is_dataclass(self, name: str) -> bool:
        import ast

        cls = self.classes.get(name)
        if cls is None:
            return False
        for dec in cls.decorator_list:
            target = dec.func if isinstance(dec, ast.Call) else dec
            if isinstance(target, ast.Attribute):
                target_name = target.attr
            elif isinstance(target, ast.Name):
                target_name = target.id
            else:
                continue
            if target_name in ("dataclass", "config"):
                return True
        return False

    def fields(self, name: str) -> list[tuple[str, Any]]:
        """A dataclass's fields in order, its bases' first (as dataclasses.fields)."""
        import ast

        cls = self.classes[name]
        out: dict[str, Any] = {}
        for base in cls.bases:
            if isinstance(base, ast.Name) and base.id in self.classes:
                out.update(dict(self.fields(base.id)))
        for node in cls.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                ann = ast.unparse(node.annotation)
                if ann.startswith("ClassVar") or ann.startswith("InitVar"):
                    continue
                out[node.target.id] = node.annotation
        return list(out.items())


def _hints(mod: _Module, ann: Any, depth: int = 0) -> list[tuple[str, Any]]:
    """get_type_hints: the members of a union / Annotated, aliases resolved, as
    (head, node): head is a builtin or typing name, "dataclass", "None" or "other"."""
    import ast

    if depth > 20:
        return [("other", ann)]
    if isinstance(ann, ast.Constant) and isinstance(ann.value, str):  # a string annotation
        return _hints(mod, ast.parse(ann.value, mode="eval").body, depth + 1)
    if isinstance(ann, ast.Constant) and ann.value is None:
        return [("None", ann)]
    if isinstance(ann, ast.BinOp) and isinstance(ann.op, ast.BitOr):
        return _hints(mod, ann.left, depth + 1) + _hints(mod, ann.right, depth + 1)
    if isinstance(ann, ast.Subscript):
        head = ast.unparse(ann.value).rsplit(".", 1)[-1]
        if head == "Annotated":
            first = ann.slice.elts[0] if isinstance(ann.slice, ast.Tuple) else ann.slice
            return _hints(mod, first, depth + 1)
        if head in ("Union", "Optional"):
            elts = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
            out = [h for e in elts for h in _hints(mod, e, depth + 1)]
            return out + ([("None", ann)] if head == "Optional" else [])
        return [(head.lower() if head in ("List", "Dict", "Tuple", "Set") else head, ann)]
    name = ast.unparse(ann).rsplit(".", 1)[-1]
    if name in ("bool", "int", "float", "str", "dict", "list", "tuple", "set", "Any"):
        return [(name, ann)]
    if name == "None":
        return [("None", ann)]
    if mod.is_dataclass(name):
        return [("dataclass", ann)]
    if name in mod.aliases:
        return _hints(mod, mod.aliases[name], depth + 1)
    return [("other", ann)]


def _literal_kind(mod: _Module, hint: Any) -> tuple[str, list[Any]]:
    import ast

    elts = hint.slice.elts if isinstance(hint.slice, ast.Tuple) else [hint.slice]
    values: list[Any] = []
    for e in elts:
        if isinstance(e, ast.Constant):
            values.append(e.value)
        else:  # Literal[OTHER_LITERAL, ...] is flattened by typing
            values += [v for h in _hints(mod, e) if h[0] == "Literal" for v in _literal_kind(mod, h[1])[1]]
    return ("int" if all(isinstance(v, int) and not isinstance(v, bool) for v in values) else "text"), values


def _field_kwargs(mod: _Module, ann: Any) -> dict[str, Any]:
    """_compute_kwargs for one field: {"nargs": ..., "action": ..., "kind": ..., "choices": ...}."""
    hints = _hints(mod, ann)
    heads = [h for h, _ in hints]
    if "dataclass" in heads:
        return {"kind": "json"}
    if "bool" in heads:
        return {"action": "BooleanOptionalAction"}
    if "Literal" in heads:
        lit = next(n for h, n in hints if h == "Literal")
        kind, values = _literal_kind(mod, lit)
        if "str" in heads:
            return {"kind": "text"}
        # optional_type: a Literal | None field also takes the word "None".
        return {"kind": "choice", "choices": sorted(str(v) for v in values) + (["None"] if "None" in heads else [])}
    for coll in ("tuple", "list", "set"):
        if coll in heads:
            node = next(n for h, n in hints if h == coll)
            import ast

            args = (
                (node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice])
                if hasattr(node, "slice")
                else []
            )
            elem = _hints(mod, args[0])[0][0] if args else "str"
            kind = {"int": "int", "float": "float"}.get(elem, "text")
            if coll == "tuple" and not any(ast.unparse(a) == "..." for a in args):
                return {"nargs": len(args), "kind": kind}
            return {"nargs": "+", "kind": kind}
    if "int" in heads:
        return {"kind": "int"}
    if "float" in heads:
        return {"kind": "float"}
    if "dict" in heads and ("str" in heads or "other" in heads or "Any" in heads):
        return {"kind": "text"}  # union_dict_and_str: JSON or text
    if "dict" in heads:
        return {"kind": "json"}
    return {"kind": "text"}


#: _compute_kwargs gives these int fields human-readable parsers ("auto", "1k", "25.6M").
HUMAN_READABLE_INTS = ("max_model_len", "max_num_batched_tokens", "kv_cache_memory_bytes")


def _config_kwargs(mod: _Module, cls: str) -> dict[str, dict[str, Any]]:
    """get_kwargs(cls): every field's kwargs."""
    out = {n: _field_kwargs(mod, a) for n, a in mod.fields(cls)}
    for name in HUMAN_READABLE_INTS:
        if name in out and out[name].get("kind") == "int":
            out[name]["kind"] = "text"
    return out


def _type_kind(expr: Any) -> str:
    """The kind an explicit ``type=`` gives."""
    import ast

    text = ast.unparse(expr)
    if "json.loads" in text:
        return "json"
    for name, kind in (("int", "int"), ("float", "float")):
        if re.fullmatch(rf"(optional_type\()?{name}\)?", text):
            return kind
    return "text"


def _apply_kwargs(kw: dict[str, Any], key: str, value: Any) -> None:
    import ast

    if key == "action":
        kw["action"] = ast.unparse(value).rsplit(".", 1)[-1].strip("'\"")
    elif key == "nargs":
        kw["nargs"] = value.value if isinstance(value, ast.Constant) else ast.unparse(value)
    elif key == "type":
        kw["kind"] = _type_kind(value)
        kw.pop("choices", None)
    elif key == "choices" and isinstance(value, ast.List):
        kw["choices"] = sorted(str(e.value) for e in value.elts if isinstance(e, ast.Constant))
        kw["kind"] = "choice"
    elif key == "const":
        kw["const"] = True


def _record(options: dict[str, dict[str, Any]], flags: list[str], kw: dict[str, Any]) -> None:
    """One add_argument: every spelling -> canonical, arity, kind (argparse's rules)."""
    long = [f for f in flags if f.startswith("--")]
    if not flags or not flags[0].startswith("-"):
        return  # a positional (model_tag)
    canonical = long[0] if long else flags[0]
    action = kw.get("action")
    nargs = kw.get("nargs")
    if action in ("store_true", "store_false", "store_const", "count", "help", "version"):
        entry: dict[str, Any] = {"arity": 0, "kind": "flag"}
    elif action == "BooleanOptionalAction":
        entry = {"arity": 0, "kind": "flag"}
        for f in long:  # argparse.BooleanOptionalAction: --no-<name> for every -- spelling
            options["--no-" + f[2:]] = {"canonical": canonical, "arity": 0, "kind": "flag", "negative": True}
    elif nargs in ("?", "*", "+") or isinstance(nargs, int):
        entry = {"arity": nargs, "kind": kw.get("kind", "text")}
    else:
        entry = {"arity": 1, "kind": kw.get("kind", "text")}
    if "choices" in kw and entry["arity"] != 0:
        entry["choices"] = kw["choices"]
    for f in flags:
        options[f] = {"canonical": canonical, **entry}


def _add_argument_calls(
    mod: _Module, func: Any, options: dict[str, dict[str, Any]], frontend: dict[str, dict[str, Any]] | None = None
) -> None:
    """Interpret a function's statements in order: ``x = get_kwargs(Cls)``, ``x["f"]["k"] = v``,
    ``del x["f"]["k"]`` and ``*.add_argument(...)`` calls (both arms of every ``if``: the
    flags registered depend on nothing an extra_args list can change)."""
    import ast

    env: dict[str, dict[str, dict[str, Any]]] = {}
    if frontend is not None:
        env["frontend_kwargs"] = frontend

    local: dict[str, dict[str, Any]] = {}  # y = x["f"]: one field's kwargs, by reference

    def lookup(node: Any) -> tuple[dict[str, Any] | None, str | None]:
        # x["f"]["k"] -> (env[x][f], k); y["k"] -> (local[y], k)
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id in local
            and isinstance(node.slice, ast.Constant)
        ):
            return local[node.value.id], str(node.slice.value)
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Subscript)
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id in env
            and isinstance(node.value.slice, ast.Constant)
            and isinstance(node.slice, ast.Constant)
        ):
            return env[node.value.value.id].setdefault(str(node.value.slice.value), {}), str(node.slice.value)
        return None, None

    for node in _statements(func.body):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            call = node.value
            if ast.unparse(call.func) == "get_kwargs" and isinstance(node.targets[0], ast.Name):
                cls = ast.unparse(call.args[0])
                env[node.targets[0].id] = _config_kwargs(mod, cls)
                continue
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Subscript)
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id in env
            and isinstance(node.value.slice, ast.Constant)
        ):
            local[node.targets[0].id] = env[node.value.value.id].setdefault(str(node.value.slice.value), {})
            continue
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                kw, key = lookup(t)
                if kw is not None and key is not None and isinstance(node, ast.Assign):
                    _apply_kwargs(kw, key, node.value)
            continue
        if isinstance(node, ast.Delete):
            for t in node.targets:
                kw, key = lookup(t)
                if kw is not None and key is not None:
                    kw.pop(key if key != "type" else "kind", None)
            continue
        for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
            if not (isinstance(call.func, ast.Attribute) and call.func.attr == "add_argument"):
                continue
            flags = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            given: dict[str, Any] = {}

            def spread(value: Any, kw: dict[str, Any]) -> None:
                # **group_kwargs["field"], or {**group_kwargs["field"], "key": value}
                if isinstance(value, ast.Name) and value.id in local:
                    kw.update(local[value.id])
                elif (
                    isinstance(value, ast.Subscript)
                    and isinstance(value.value, ast.Name)
                    and value.value.id in env
                    and isinstance(value.slice, ast.Constant)
                ):
                    kw.update(env[value.value.id][str(value.slice.value)])
                elif isinstance(value, ast.Dict):
                    for key, item in zip(value.keys, value.values):
                        if key is None:
                            spread(item, kw)
                        elif isinstance(key, ast.Constant):
                            _apply_kwargs(kw, str(key.value), item)
                else:
                    raise ValueError(f"add_argument(**{ast.unparse(value)}) not understood")

            for k in call.keywords:
                if k.arg is None:
                    spread(k.value, given)
                else:
                    _apply_kwargs(given, k.arg, k.value)
            _record(options, flags, given)


def _statements(body: list[Any]) -> Iterator[Any]:
    """Statements in source order, the bodies of if / with / for / try flattened."""
    import ast

    for node in body:
        if isinstance(node, ast.If):
            yield from _statements(node.body)
            yield from _statements(node.orelse)
        elif isinstance(node, (ast.With, ast.For, ast.Try)):
            yield from _statements(node.body)
        else:
            yield node


def _method(cls: Any, name: str) -> Any:
    import ast

    return next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name)


def vllm_serve_options(sources: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every spelling ``vllm serve`` accepts -> canonical, arity (0, 1, N, "?", "+"), kind."""
    import ast

    mod = _Module(sources)
    options: dict[str, dict[str, Any]] = {}
    cli_args = ast.parse(sources["vllm/entrypoints/openai/cli_args.py"])
    make = next(n for n in cli_args.body if isinstance(n, ast.FunctionDef) and n.name == "make_arg_parser")
    # make_arg_parser's own add_argument calls (model_tag, --headless, ...), then the classes.
    _add_argument_calls(mod, make, options)
    # FrontendArgs.add_cli_args: one flag per field, after every _customize_cli_kwargs of the
    # class and its bases (base first: each calls super() first).
    frontend = _config_kwargs(mod, "FrontendArgs")
    for cls_name in ("BaseFrontendArgs", "FrontendArgs"):
        _add_argument_calls(mod, _method(mod.classes[cls_name], "_customize_cli_kwargs"), {}, frontend)
    for name, kw in frontend.items():
        _record(options, [f"--{name.replace('_', '-')}"], kw)
    for cls_name in ("EngineArgs", "AsyncEngineArgs"):
        _add_argument_calls(mod, _method(mod.classes[cls_name], "add_cli_args"), options)
    serve = ast.parse(sources["vllm/entrypoints/cli/serve.py"])
    sub = next(n for n in ast.walk(serve) if isinstance(n, ast.FunctionDef) and n.name == "subparser_init")  # --grpc
    _add_argument_calls(mod, sub, options)
    # argparse's own (add_help is left True); FlexibleArgumentParser.parse_args rewrites
    # `-O<level>` / `-O <0-3>` to --optimization-level (engine_args mirrors that).
    _record(options, ["-h", "--help"], {"action": "help"})
    return dict(sorted(options.items()))


VLLM_RULES = {
    # FlexibleArgumentParser.parse_args (vllm/utils/argparse_utils.py): in a word starting
    # with "--", '_' becomes '-' up to the first '.' (and the '=' if any); `--x=v` splits;
    # a word starting with '-' that holds '.' is a dotted JSON key (`--x.k v` -> --x '{"k": v}'),
    # value words included; `--config FILE` splices a YAML file's flags in; `-O3` is
    # --optimization-level. argparse itself (allow_abbrev left True) takes unambiguous
    # prefixes of long options and `-x=v` for short ones.
    "underscore_to_dash": "long-until-dot",
    "equals_form": True,
    "abbreviations": True,
    "dotted_json_keys": True,
    "positionals": ["model_tag"],
}


#: Where vLLM registers the names some options take (read for the table's ``registries``).
VLLM_REGISTRY_FILES = {
    "reasoning_parser": "vllm/reasoning/__init__.py",
    "tool_call_parser": "vllm/tool_parsers/__init__.py",
    "attention_backend": "vllm/v1/attention/backends/registry.py",
}


def vllm_registries(sources: dict[str, str]) -> dict[str, list[str]]:
    """The names vLLM's registries accept: ``--reasoning-parser`` (the keys of
    ``_REASONING_PARSERS_TO_REGISTER``), ``--tool-call-parser`` (``_TOOL_PARSERS_TO_REGISTER``),
    ``--attention-backend`` (the members of ``AttentionBackendEnum``), the speculative
    config's ``method`` (the ``SpeculativeMethod`` Literal, flattened) and its keys."""
    import ast

    def registered(path: str, variable: str) -> list[str]:
        for node in ast.parse(sources[path]).body:
            if (
                isinstance(node, ast.Assign)
                and [ast.unparse(t) for t in node.targets] == [variable]
                and isinstance(node.value, ast.Dict)
            ):
                return sorted(str(k.value) for k in node.value.keys if isinstance(k, ast.Constant))
        raise ValueError(f"{path}: no {variable} = {{...}}")

    backends = next(
        n
        for n in ast.parse(sources[VLLM_REGISTRY_FILES["attention_backend"]]).body
        if isinstance(n, ast.ClassDef) and n.name == "AttentionBackendEnum"
    )
    members = sorted(
        s.targets[0].id
        for s in backends.body
        if isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name)
    )
    mod = _Module(sources)
    method = next(h for h in _hints(mod, mod.aliases["SpeculativeMethod"]) if h[0] == "Literal")
    return {
        "reasoning_parser": registered(VLLM_REGISTRY_FILES["reasoning_parser"], "_REASONING_PARSERS_TO_REGISTER"),
        "tool_call_parser": registered(VLLM_REGISTRY_FILES["tool_call_parser"], "_TOOL_PARSERS_TO_REGISTER"),
        "attention_backend": members,
        "speculative_method": sorted(str(v) for v in _literal_kind(mod, method[1])[1]),
        # --speculative-config's JSON becomes SpeculativeConfig(**json): its fields are the keys.
        "speculative_config_keys": sorted(name for name, _ in mod.fields("SpeculativeConfig")),
    }


def vllm_wheel_sources(version: str) -> dict[str, str]:
    """The files the generator reads, from the vLLM ``version`` wheel (pip download, cached)."""
    from rigkit.sandbox.offline import default_cache_dir

    wheels = default_cache_dir() / "wheels"
    found = sorted(wheels.glob(f"vllm-{version}-*.whl"))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", f"vllm=={version}", "--no-deps", "-d", str(wheels)],
            check=True,
        )
        found = sorted(wheels.glob(f"vllm-{version}-*.whl"))
    with zipfile.ZipFile(found[0]) as zf:
        return {
            name: zf.read(name).decode()
            for name in zf.namelist()
            if name in VLLM_FILES
            or name in VLLM_REGISTRY_FILES.values()
            or (name.endswith(".py") and name.startswith(VLLM_TYPE_DIRS))
        }


def vllm_table(version: str) -> dict[str, Any]:
    sources = vllm_wheel_sources(version)
    return {
        "engine": "vllm",
        "version": version,
        "source": f"vllm {version} wheel: {', '.join(VLLM_FILES)}, the config dataclasses and the registries "
        f"({', '.join(VLLM_REGISTRY_FILES.values())})",
        "rules": VLLM_RULES,
        "options": vllm_serve_options(sources),
        "registries": vllm_registries(sources),
    }


# --------------------------------------------------------------------------------------------
# SGLang: `python3 -m sglang.launch_server`'s argparse parser, read with ast (importing SGLang
# needs torch).
#
# sglang/launch_server.py calls prepare_server_args(sys.argv[1:]) (sglang/srt/server_args.py):
# a plain `argparse.ArgumentParser(prog="sglang serve")`, ServerArgs.add_cli_args(parser), and
# a `--config` YAML merge when the word "--config" is in argv. add_cli_args is a flat list of
# `parser.add_argument(...)` calls with literal spellings; the kwargs read: action (store_true;
# argparse.BooleanOptionalAction -> --x and --no-x; SGLang's own Action classes take the
# `nargs` default of their __init__: 0 for the deprecated flags), nargs, type (int, float,
# json.loads / json_list_type -> JSON, human_readable_int "256k" -> text, str) and choices
# (literals, module-level constants, `["auto"] + <local>` where the local is the keys of a
# parser registry dict in another file). Options sharing a `dest` are one option: their
# canonical is the first long spelling registered for that dest.

SGLANG_FILES = (
    "sglang/launch_server.py",
    "sglang/srt/server_args.py",
    "sglang/srt/utils/common.py",  # SUPPORTED_LORA_TARGET_MODULES, imported by server_args.py
    "sglang/srt/parser/reasoning_parser.py",
    "sglang/srt/function_call/function_call_parser.py",
)
#: Registries whose keys are choices (`list(<Class>.<dict>.keys())`) -> the file defining it.
SGLANG_REGISTRIES = {
    "ReasoningParser.DetectorMap": "sglang/srt/parser/reasoning_parser.py",
    "FunctionCallParser.ToolCallParserEnum": "sglang/srt/function_call/function_call_parser.py",
}
_SGLANG_KINDS = {
    "int": "int",
    "float": "float",
    "json.loads": "json",
    "json_list_type": "json",
    "str": "text",
    "nullable_str": "text",
    "human_readable_int": "text",  # "262144", "256k", "1Mi"
}


def _registry_keys(sources: dict[str, str], ref: str) -> list[str]:
    """The string keys of a class-level dict literal, e.g. ``ReasoningParser.DetectorMap``."""
    import ast

    cls_name, attr = ref.split(".")
    tree = ast.parse(sources[SGLANG_REGISTRIES[ref]])
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name)
    for node in cls.body:
        target: ast.expr
        value: ast.expr | None
        if isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id == attr and isinstance(value, ast.Dict):
            return [k.value for k in value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
    raise ValueError(f"{ref}: no dict literal")


class _SglangChoices:
    """Evaluates a ``choices=`` expression: literals, module constants, ``+``, locals."""

    def __init__(self, sources: dict[str, str], tree: Any) -> None:
        import ast

        self.sources = sources
        self.names: dict[str, Any] = {}
        imported: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                self.names[node.targets[0].id] = node.value
            elif isinstance(node, ast.ImportFrom) and node.module == "sglang.srt.utils.common":
                imported |= {a.asname or a.name for a in node.names}
        for node in ast.parse(sources["sglang/srt/utils/common.py"]).body:
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in imported
            ):
                self.names.setdefault(node.targets[0].id, node.value)
        self.local: dict[str, list[str]] = {}

    def assign(self, node: Any) -> None:
        """A local of add_cli_args: ``x = list(<Registry>.keys())``."""
        import ast

        if not (isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Call)):
            return
        text = ast.unparse(node.value)
        for ref in SGLANG_REGISTRIES:
            if text == f"list({ref}.keys())":
                self.local[node.targets[0].id] = _registry_keys(self.sources, ref)

    def value(self, expr: Any, depth: int = 0) -> list[str]:
        import ast

        if depth > 10:
            raise ValueError(f"choices too deep: {ast.unparse(expr)}")
        if isinstance(expr, (ast.List, ast.Tuple, ast.Set)):
            out = []
            for e in expr.elts:
                if isinstance(e, ast.Name) and isinstance(self.names.get(e.id), ast.Constant):
                    e = self.names[e.id]
                if not isinstance(e, ast.Constant):
                    raise ValueError(f"choices element not a literal: {ast.unparse(e)}")
                out.append(str(e.value))
            return out
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
            return self.value(expr.left, depth + 1) + self.value(expr.right, depth + 1)
        if isinstance(expr, ast.Name) and expr.id in self.local:
            return list(self.local[expr.id])
        if isinstance(expr, ast.Name) and expr.id in self.names:
            return self.value(self.names[expr.id], depth + 1)
        raise ValueError(f"choices not understood: {ast.unparse(expr)}")


def _action_nargs(tree: Any) -> dict[str, Any]:
    """Module-level argparse.Action subclasses -> the ``nargs`` default of their __init__
    (None when they take argparse's default, one value)."""
    import ast

    out: dict[str, Any] = {}
    for cls in tree.body:
        if not (isinstance(cls, ast.ClassDef) and any(ast.unparse(b) == "argparse.Action" for b in cls.bases)):
            continue
        out[cls.name] = None
        for fn in cls.body:
            if isinstance(fn, ast.FunctionDef) and fn.name == "__init__":
                args = fn.args.args
                defaults = dict(zip([a.arg for a in args[len(args) - len(fn.args.defaults) :]], fn.args.defaults))
                default = defaults.get("nargs")
                if isinstance(default, ast.Constant):
                    out[cls.name] = default.value
    return out


def sglang_launch_options(sources: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every spelling ``sglang.launch_server`` accepts -> canonical, arity (0, 1, "?", "*",
    "+"), kind and choices."""
    import ast

    tree = ast.parse(sources["sglang/srt/server_args.py"])
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ServerArgs")
    fn = _method(cls, "add_cli_args")
    choices = _SglangChoices(sources, tree)
    actions = _action_nargs(tree)
    options: dict[str, dict[str, Any]] = {}
    canonical_of_dest: dict[str, str] = {}
    for node in fn.body:
        if isinstance(node, ast.Assign):
            choices.assign(node)
            continue
        if not (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and ast.unparse(node.value.func) == "parser.add_argument"
        ):
            raise ValueError(f"add_cli_args: statement not understood at line {node.lineno}")
        call = node.value
        flags = []
        for a in call.args:
            if not (isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("-")):
                raise ValueError(f"add_argument with a spelling that is no literal option at line {node.lineno}")
            flags.append(a.value)
        kw = {k.arg: k.value for k in call.keywords if k.arg is not None}
        if len(kw) != len(call.keywords):
            raise ValueError(f"add_argument(**...) at line {node.lineno}")
        long = [f for f in flags if f.startswith("--")]
        dest_node = kw.get("dest")
        dest = (
            str(dest_node.value)
            if isinstance(dest_node, ast.Constant)
            else (long[0] if long else flags[0]).lstrip("-").replace("-", "_")
        )
        canonical = canonical_of_dest.setdefault(dest, long[0] if long else flags[0])
        action = ast.unparse(kw["action"]).strip("'\"") if "action" in kw else None
        nargs_node = kw.get("nargs")
        nargs = nargs_node.value if isinstance(nargs_node, ast.Constant) else None
        if nargs_node is not None and nargs is None:
            raise ValueError(f"nargs not a literal at line {node.lineno}")
        if action in actions and nargs_node is None:
            nargs = actions[action]
        kind = _SGLANG_KINDS.get(ast.unparse(kw["type"]), "text") if "type" in kw else "text"
        entry: dict[str, Any]
        if action in ("store_true", "store_false", "store_const", "count", "help", "version") or nargs == 0:
            entry = {"arity": 0, "kind": "flag"}
        elif action == "argparse.BooleanOptionalAction":
            entry = {"arity": 0, "kind": "flag"}
            for f in long:  # argparse.BooleanOptionalAction: --no-<name> for every -- spelling
                options["--no-" + f[2:]] = {"canonical": canonical, "arity": 0, "kind": "flag", "negative": True}
        elif action is not None and action not in actions:
            raise ValueError(f"action {action} not understood at line {node.lineno}")
        else:
            entry = {"arity": nargs if nargs in ("?", "*", "+") or isinstance(nargs, int) else 1, "kind": kind}
            if "choices" in kw:
                entry["kind"] = "choice"
                entry["choices"] = sorted(set(choices.value(kw["choices"])))
        for f in flags:
            options[f] = {"canonical": canonical, **entry}
    # argparse's own: ArgumentParser(prog="sglang serve") keeps add_help=True.
    options["-h"] = options["--help"] = {"canonical": "--help", "arity": 0, "kind": "flag"}
    return dict(sorted(options.items()))


SGLANG_RULES = {
    # prepare_server_args (sglang/srt/server_args.py): `argparse.ArgumentParser(prog="sglang
    # serve")` with argparse's defaults: allow_abbrev=True (an unambiguous prefix of a long
    # option is that option: `--tp 2` is --tp-size, `--api-ke` is --api-key), `--x=v` is
    # `--x v`, no '_' -> '-' rewriting (`--api_key` is an error), no `@file` arguments
    # (fromfile_prefix_chars None), no positionals. When the exact word "--config" is in
    # argv, ConfigArgumentMerger splices a YAML file's options in before parsing.
    # launch_server.py first runs load_plugins(): installed plugins (entry points) may add
    # choices (add_*_choices); the pinned image's are its own.
    "underscore_to_dash": "none",
    "equals_form": True,
    "abbreviations": True,
    "config_file": "--config",
    "positionals": False,
}


def sglang_wheel_sources(version: str) -> dict[str, str]:
    """The files the generator reads, from the SGLang ``version`` wheel (pip download, cached)."""
    from rigkit.sandbox.offline import default_cache_dir

    wheels = default_cache_dir() / "wheels"
    found = sorted(wheels.glob(f"sglang-{version}-*.whl"))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", f"sglang=={version}", "--no-deps", "-d", str(wheels)],
            check=True,
        )
        found = sorted(wheels.glob(f"sglang-{version}-*.whl"))
    with zipfile.ZipFile(found[0]) as zf:
        return {name: zf.read(name).decode() for name in SGLANG_FILES}


def sglang_table(version: str) -> dict[str, Any]:
    return {
        "engine": "sglang",
        "version": version,
        "source": f"sglang {version} wheel: {', '.join(SGLANG_FILES)}",
        "rules": SGLANG_RULES,
        "options": sglang_launch_options(sglang_wheel_sources(version)),
    }


def render(table: dict[str, Any]) -> str:
    """A table as committed: sorted, indented JSON."""
    return json.dumps(table, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine", choices=["llama-server", "vllm", "sglang"])
    parser.add_argument("version", help="llama-cpp-python sdist version (llama-server), vLLM or SGLang version")
    args = parser.parse_args(argv)
    if args.engine == "llama-server":
        table = llama_server_table(args.version)
    elif args.engine == "vllm":
        table = vllm_table(args.version)
    else:
        table = sglang_table(args.version)
    out = OUT_DIR / f"{table['engine']}-{table['version']}.json"
    out.write_text(render(table))
    print(f"{out}: {len(table['options'])} spellings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
