"""Every exit-2 message a user may meet is listed in docs/configuration.md (issue 37).

Exit 2 is a ``ConfigError`` (``ray_pipeline/errors.py``), a ``ValueError`` that a schema
validator raises and ``ray_pipeline/loading.py`` turns into one, or argparse's usage error.
This walks the package's source with ``ast`` and finds every place that writes such a
message: ``ConfigError.at(where, message)``, ``ConfigError("message")`` and its ``header=``,
``Problem(where, message)``, ``raise ValueError(...)`` in the schema's validators (and in what
they call in other modules), the calls of a function that passes its argument on as the
message (``_Collector.add(where, message)``), and the strings a message-building function
returns (``tag_problem``, ``naming.unsafe_name_reason``). It takes each message's longest
literal text (a constant, an f-string's constant parts, else the local variables and module
constants it is built from; short words between values, ``split {x!r} not in {y}``, are
matched in order on one line) and asserts it occurs in docs/configuration.md. A message with
no literal text of its own (it passes on another error's message) must be listed in
``COMPUTED`` with the reason, so none is skipped silently. The other way round, each message
the appendix ("Every exit-2 message") quotes must still be one the code writes. Quick: the
source is read, never imported.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ray_pipeline"
DOC = ROOT / "docs" / "configuration.md"
APPENDIX = "## Every exit-2 message"
ELIDED = " … "
"""Joins the words of a message that holds no long literal text (matched in order)."""

MIN_FRAGMENT = 10
"""Literal text shorter than this (normalised) is too little to find a message by."""

COMPUTED: dict[str, str] = {
    # "<file>::<function>::<the message expression>" -> why it needs no entry of its own
    "ray_pipeline/errors.py::ConfigError.__init__::problems": (
        'ConfigError("text"): the text, at each such call, is the site'
    ),
    "ray_pipeline/loading.py::_compose::p.message": (
        "an included file's own read_yaml error, passed on under include.<section>"
    ),
    "ray_pipeline/loading.py::parse_override::f'the value {unending}'": (
        "_unending's messages (self-containing values, alias bombs), sites of their own"
    ),
    "ray_pipeline/loading.py::_apply_override::redact(str(exc))": (
        "parse_override's ValueError, passed on (its messages are sites of their own)"
    ),
    "ray_pipeline/loading.py::_problems_from::message": (
        "what _explain returns for a pydantic error (its returns are sites of their own)"
    ),
    "ray_pipeline/loading.py::_explain::REMOVED_KEYS[tuple(map(str, loc))]": (
        "a removed key's advice: test_removed_keys_are_documented checks each"
    ),
    "ray_pipeline/loading.py::_explain::msg": (
        "pydantic's message: a schema validator's ValueError (sites of their own) or "
        "pydantic's own for types and bounds (the appendix describes them)"
    ),
    "ray_pipeline/naming.py::check_safe_name::f'{what} {name!r} {reason}'": (
        "unsafe_name_reason's reasons (sites of their own) after the name"
    ),
    "ray_pipeline/data/init_config.py::_experiment_name::f'{flags.name!r} {reason}'": (
        "unsafe_name_reason's reasons (sites of their own) after --name's value"
    ),
    "ray_pipeline/precision.py::resolve::_refusal(requested, here)": (
        "_refusal's message, a site of its own"
    ),
    "ray_pipeline/data/readers.py::read_conll::problem": (
        "tag_problem's message (data/examples.py), a site of its own"
    ),
    "ray_pipeline/data/hub.py::_examples::wrong[0]": (
        "_wrong's message for a row's first bad tag (its returns are sites of their own)"
    ),
    "ray_pipeline/data/hub.py::_examples::problem": (
        "_wrong's message for a bad label (its returns are sites of their own)"
    ),
    "ray_pipeline/data/hub.py::_wrong::None if column else tag_problem(name)": (
        "tag_problem's message (data/examples.py), a site of its own"
    ),
    "ray_pipeline/final/source.py::resolve_source::f'{variant.name} is {variant.record.status}'": (
        "a variant and its status only ('hpo_tiny-bert_v2 is running'): the appendix "
        "describes it in words"
    ),
}
"""Message sites that hold no literal text of their own, each with the reason."""

UNREACHABLE: dict[str, str] = {
    "ray_pipeline/run_mode.py::get_run_mode": (
        "guards against hand-built sections: the schema lets no unknown run.mode through, and "
        "benchmark_run_mode only ever asks it for HPO's mode, which is never null"
    ),
    "ray_pipeline/schema/base.py::resolved": (
        "called by the stages on a validated config, whose nulls the schema has resolved"
    ),
}
"""Functions in reach of the schema whose ValueErrors no loaded config can meet."""


@dataclass(frozen=True)
class Site:
    """One place that writes an exit-2 message."""

    path: str
    """The module, relative to the repository (``ray_pipeline/loading.py``)."""
    line: int
    function: str
    """The enclosing function (``Class.method``), or ``<module>``."""
    kind: str
    """``ConfigError.at``, ``ConfigError``, ``header``, ``Problem``, ``ValueError`` (a
    validator's), ``helper`` (a call of a function that passes its argument on as the
    message) or ``returns`` (a string a message-building function returns)."""
    message: str
    """The message expression, as written (``ast.unparse``)."""
    fragment: str
    """Its longest literal text, whitespace-normalised, or its words joined by ``ELIDED``;
    '' when it has none."""
    texts: tuple[str, ...] = ()
    """Every literal text it may show (each alternative, ``is not a directory`` or ``is not
    writable by you``), and its words in order: what a message quoted in the docs may be
    matched to."""

    @property
    def key(self) -> str:
        return f"{self.path}::{self.function}::{self.message}"

    def __str__(self) -> str:
        return f"{self.path}:{self.line} ({self.function}): {self.fragment or self.message!r}"


# ------------------------------------------------------------------------------- the walk

_Function = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass(frozen=True)
class _Module:
    path: str
    tree: ast.Module
    functions: dict[str, _Function]
    """Every function and method by its plain name (the last one wins)."""
    constants: dict[str, ast.expr]
    """Module-level ``NAME = <expr>`` assignments."""
    imports: dict[str, tuple[str, str]]
    """``from ray_pipeline.x import name as alias``: alias -> (``ray_pipeline/x.py``, name)."""
    parents: dict[ast.AST, ast.AST]


_Raw = tuple[_Module, ast.AST, str, ast.expr]
"""(module, the node that writes the message, kind, the message expression)."""


@cache
def _modules() -> dict[str, _Module]:
    found: dict[str, _Module] = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        rel = file.relative_to(ROOT).as_posix()
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=rel)
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        functions = {n.name: n for n in ast.walk(tree) if isinstance(n, _Function)}
        constants = {
            target.id: node.value
            for node in tree.body
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Name)
        }
        imports = {
            (alias.asname or alias.name): (node.module.replace(".", "/") + ".py", alias.name)
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
            for alias in node.names
        }
        found[rel] = _Module(rel, tree, functions, constants, imports, parents)
    return found


def _enclosing(module: _Module, node: ast.AST) -> _Function | None:
    while node in module.parents:
        node = module.parents[node]
        if isinstance(node, _Function):
            return node
    return None


def _qualname(module: _Module, node: ast.AST) -> str:
    names = []
    while node in module.parents:
        node = module.parents[node]
        if isinstance(node, _Function | ast.ClassDef):
            names.append(node.name)
    return ".".join(reversed(names)) or "<module>"


def _argument(call: ast.Call, index: int, name: str) -> ast.expr | None:
    if len(call.args) > index and not isinstance(call.args[index], ast.Starred):
        return call.args[index]
    return next((k.value for k in call.keywords if k.arg == name), None)


def _called(func: ast.expr, *dotted: str) -> bool:
    return ast.unparse(func) in dotted


def _parameters(function: _Function) -> list[str]:
    return [a.arg for a in [*function.args.posonlyargs, *function.args.args]]


def _is_method(function: _Function) -> bool:
    return _parameters(function)[:1] in (["self"], ["cls"])


def _assigned(function: ast.AST | None, name: str, before: int) -> list[ast.expr]:
    """The values assigned to local ``name`` in ``function`` (``=``, ``:=``, the first of a
    tuple a call returns) on lines up to ``before``, or on any line when none is."""
    if function is None:
        return []
    found: list[tuple[int, ast.expr]] = []
    for node in ast.walk(function):
        if isinstance(node, ast.Assign):
            # ``name = ...``, or ``name, shown = _explain(...)``: the first of what it returns
            firsts = [t.elts[0] if isinstance(t, ast.Tuple) and t.elts else t for t in node.targets]
            if any(isinstance(t, ast.Name) and t.id == name for t in firsts):
                found.append((node.lineno, node.value))
        elif (
            isinstance(node, ast.AnnAssign | ast.NamedExpr)
            and node.value is not None
            and isinstance(node.target, ast.Name)
            and node.target.id == name
        ):
            found.append((node.lineno, node.value))
    earlier = [value for line, value in found if line <= before]
    return earlier or [value for _, value in found]


def _direct(expr: ast.expr) -> list[str]:
    """The literal text written in ``expr`` itself: constants, an f-string's constant parts,
    both sides of ``+`` and of ``a if c else b``, the first of a tuple."""
    if isinstance(expr, ast.Constant):
        return [expr.value] if isinstance(expr.value, str) else []
    if isinstance(expr, ast.JoinedStr):
        return [str(p.value) for p in expr.values if isinstance(p, ast.Constant)]
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        return _direct(expr.left) + _direct(expr.right)
    if isinstance(expr, ast.IfExp):
        return _direct(expr.body) + _direct(expr.orelse)
    if isinstance(expr, ast.Tuple) and expr.elts:
        return _direct(expr.elts[0])
    return []


def _names(expr: ast.expr) -> list[ast.Name]:
    """The variables ``expr`` puts into the text (bare, or as f-string values)."""
    if isinstance(expr, ast.Name):
        return [expr]
    if isinstance(expr, ast.JoinedStr):
        values = [p.value for p in expr.values if isinstance(p, ast.FormattedValue)]
        return [v for v in values if isinstance(v, ast.Name)]
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        return _names(expr.left) + _names(expr.right)
    if isinstance(expr, ast.IfExp):
        return _names(expr.body) + _names(expr.orelse)
    if isinstance(expr, ast.Tuple) and expr.elts:
        return _names(expr.elts[0])
    return []


def _values(module: _Module, expr: ast.expr, seen: frozenset[int] = frozenset()) -> list[ast.expr]:
    """``expr`` and, transitively, what is assigned to the local variables and module
    constants it puts into the text."""
    if id(expr) in seen:
        return []
    out = [expr]
    for name in _names(expr):
        values = _assigned(_enclosing(module, name), name.id, name.lineno)
        if not values and name.id in module.constants:
            values = [module.constants[name.id]]
        for value in values:
            out += _values(module, value, seen | {id(expr)})
    return out


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip(" ;:,.()")


def _longest(pieces: list[str]) -> str:
    texts = sorted({_normalise(p) for p in pieces}, key=lambda p: (-len(p), p))
    return texts[0] if texts and len(texts[0]) >= MIN_FRAGMENT else ""


def _fragment(module: _Module, message: ast.expr) -> str:
    """The longest literal text written in the message expression itself, else the longest
    in the variables and constants it is built from, else its words in order."""
    direct = _direct(message)
    found = _longest(direct) or _longest([p for v in _values(module, message) for p in _direct(v)])
    words = [w for w in map(_normalise, direct) if w]
    if not found and len(" ".join(words)) >= MIN_FRAGMENT:
        found = ELIDED.join(words)
    return found


def _texts(module: _Module, message: ast.expr) -> tuple[str, ...]:
    pieces = {_normalise(p) for v in _values(module, message) for p in _direct(v)}
    words = [w for w in map(_normalise, _direct(message)) if w]
    joined = [ELIDED.join(words)] if len(" ".join(words)) >= 6 else []
    return tuple(sorted({p for p in pieces if len(p) >= MIN_FRAGMENT} | set(joined)))


def _error_sites(module: _Module) -> Iterator[tuple[ast.Call, str, ast.expr]]:
    """``ConfigError.at(where, message)``, ``ConfigError("message")``, ``header=`` and
    ``Problem(where, message)`` calls."""
    for node in ast.walk(module.tree):
        if not isinstance(node, ast.Call):
            continue
        if _called(node.func, "ConfigError.at"):
            message = _argument(node, 1, "message")
            assert message is not None, f"{module.path}:{node.lineno}"
            yield node, "ConfigError.at", message
        elif _called(node.func, "ConfigError", "cls"):
            first = _argument(node, 0, "problems")
            if isinstance(first, ast.Name):  # a variable: a message when a string is assigned
                assigned = _assigned(_enclosing(module, node), first.id, node.lineno)
                first = first if any(_direct(value) for value in assigned) else None
            if isinstance(first, ast.Constant | ast.JoinedStr | ast.BinOp | ast.Name):
                yield node, "ConfigError", first
            header = next((k.value for k in node.keywords if k.arg == "header"), None)
            if header is not None and not (isinstance(header, ast.Constant) and not header.value):
                yield node, "header", header
        elif _called(node.func, "Problem"):
            message = _argument(node, 1, "message")
            assert message is not None, f"{module.path}:{node.lineno}"
            yield node, "Problem", message


def _validation_code() -> Iterator[tuple[_Module, ast.AST]]:
    """Where a ValueError becomes exit 2: the schema package, the functions it imports from
    other modules of the package and what those call there, and ``loading.parse_override``."""
    modules = _modules()
    schema = [m for p, m in modules.items() if p.startswith("ray_pipeline/schema/")]
    todo = [("ray_pipeline/loading.py", "parse_override")]
    for module in schema:
        yield module, module.tree
        todo += [target for target in module.imports.values() if "/schema/" not in target[0]]
    done: set[tuple[str, str]] = set()
    while todo:
        path, name = todo.pop()
        function = modules[path].functions.get(name) if path in modules else None
        if function is None or (path, name) in done:
            continue
        done.add((path, name))
        if f"{path}::{name}" not in UNREACHABLE:
            yield modules[path], function
        for node in ast.walk(function):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                todo.append((path, node.func.id))


def _value_error_sites() -> Iterator[_Raw]:
    for module, code in _validation_code():
        for node in ast.walk(code):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            enclosing = _enclosing(module, node)
            if enclosing is not None and f"{module.path}::{enclosing.name}" in UNREACHABLE:
                continue
            assert not _called(node.exc.func, "PydanticCustomError"), (
                f"{module.path}:{node.lineno}: teach this test PydanticCustomError's message"
            )
            if _called(node.exc.func, "ValueError", "AssertionError"):
                message = _argument(node.exc, 0, "")
                assert message is not None, f"{module.path}:{node.lineno}"
                yield module, node, "ValueError", message


def _pass_through(raw: list[_Raw]) -> dict[tuple[str, str], int]:
    """(module, function) -> the position of the argument a function passes on, unchanged,
    as the message (``_Collector.add(self, where, message)``): its callers' are the sites."""
    out: dict[tuple[str, str], int] = {}
    for module, node, _, message in raw:
        function = _enclosing(module, node)
        if function is None or not isinstance(message, ast.Name):
            continue
        parameters = _parameters(function)
        if message.id in parameters and not _assigned(function, message.id, 10**9):
            out[(module.path, function.name)] = parameters.index(message.id) - _is_method(function)
    return out


def _callers(passing: dict[tuple[str, str], int]) -> Iterator[_Raw]:
    """The arguments the callers of pass-through functions give as the message (a method is
    called in its own module, a function there or where it is imported)."""
    for (path, name), index in passing.items():
        function = _modules()[path].functions[name]
        keyword = _parameters(function)[index + _is_method(function)]
        for module in _modules().values():
            if module.path != path and module.imports.get(name) != (path, name):
                continue
            for node in ast.walk(module.tree):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                message = _argument(node, index, keyword) if called == name else None
                if message is not None:
                    yield module, node, "helper", message


def _builder(module: _Module, call: ast.Call) -> tuple[_Module, ast.FunctionDef] | None:
    """The package function ``call`` calls, when it builds message text (returns some)."""
    if not isinstance(call.func, ast.Name):
        return None
    target, name = module, call.func.id
    if name not in module.functions:
        path, name = module.imports.get(name, ("", ""))
        if path not in _modules():
            return None
        target = _modules()[path]
    function = target.functions.get(name)
    if not isinstance(function, ast.FunctionDef):
        return None
    returns = [n.value for n in ast.walk(function) if isinstance(n, ast.Return) and n.value]
    if not any(_longest(_direct(r)) for r in returns):
        return None  # a filter (redact) or a lookup, not a message
    return target, function


def _built(raw: list[_Raw]) -> Iterator[_Raw]:
    """The strings that message-building functions return (``tag_problem``, ``_refusal``),
    found from the calls in messages; a return that calls another builder is that one's."""
    todo = [
        (module, call)
        for module, _, _, message in raw
        for value in _values(module, message)
        for call in ast.walk(value)
        if isinstance(call, ast.Call)
    ]
    done: set[int] = set()
    while todo:
        module, call = todo.pop()
        built = _builder(module, call)
        if built is None or id(built[1]) in done:
            continue
        target, function = built
        done.add(id(built[1]))
        for node in ast.walk(function):
            if not isinstance(node, ast.Return) or node.value is None:
                continue
            value = node.value.elts[0] if isinstance(node.value, ast.Tuple) else node.value
            if isinstance(value, ast.Constant) and value.value is None:
                continue
            if isinstance(value, ast.Call) and _builder(target, value) is not None:
                todo.append((target, value))
                continue
            yield target, node, "returns", value
            calls = (c for v in _values(target, value) for c in ast.walk(v))
            todo += [(target, c) for c in calls if isinstance(c, ast.Call)]


@cache
def message_sites() -> tuple[Site, ...]:
    """Every exit-2 message site of the package, in file and line order."""
    raw: list[_Raw] = []
    for module in _modules().values():
        raw += [(module, call, kind, message) for call, kind, message in _error_sites(module)]
    raw += _value_error_sites()
    passing = _pass_through(raw)

    def passed_on(site: _Raw) -> bool:
        function = _enclosing(site[0], site[1])
        here = (site[0].path, function.name if function else "")
        return here in passing and isinstance(site[3], ast.Name)

    raw = [site for site in raw if not passed_on(site)]
    raw += _callers(passing)
    raw += _built(raw)
    sites = {
        Site(
            module.path,
            getattr(node, "lineno", 0),
            _qualname(module, node),
            kind,
            ast.unparse(message),
            _fragment(module, message),
            _texts(module, message),
        )
        for module, node, kind, message in raw
    }
    return tuple(sorted(sites, key=lambda s: (s.path, s.line, s.kind, s.message)))


# ------------------------------------------------------------------------------- the docs


def _doc_lines(text: str) -> list[str]:
    """The doc's lines, as a message reads there: ``\\|`` (a table's pipe) unescaped,
    whitespace normalised."""
    return [re.sub(r"\s+", " ", line.replace("\\|", "|")) for line in text.splitlines()]


def _appendix() -> str:
    text = DOC.read_text(encoding="utf-8")
    assert APPENDIX in text, f"{DOC} has no section {APPENDIX!r}"
    after = text.split(APPENDIX, 1)[1]
    return after.split("\n## ", 1)[0]


def _documented(fragment: str, lines: list[str]) -> bool:
    """Whether ``fragment`` occurs in ``lines`` (its words in order on one line, for a
    fragment joined by ``ELIDED``)."""
    words = fragment.split(ELIDED)
    for line in lines:
        at = 0
        for word in words:
            at = line.find(word, at)
            if at < 0:
                break
            at += len(word)
        else:
            return True
    return False


def _quoted_messages(appendix: str) -> list[tuple[int, str]]:
    """(line, code span) of each message the appendix's tables quote (their last column)."""
    out = []
    for number, line in enumerate(appendix.splitlines(), start=1):
        cells = re.split(r"(?<!\\)\|", line.strip())
        if not line.startswith("|") or len(cells) < 3 or set(cells[-2]) <= set(" -:"):
            continue
        spans = re.findall(r"``(.+?)``|`([^`]+)`", cells[-2])
        out += [(number, _doc_lines(a or b)[0]) for a, b in spans]
    return out


# ------------------------------------------------------------------------------- the tests


def test_the_walk_finds_every_kind_of_site() -> None:
    """A guard on the walk itself: it finds each kind of site, and ones known to be there."""
    sites = message_sites()
    kinds = {s.kind for s in sites}
    assert kinds >= {"ConfigError.at", "header", "Problem", "ValueError", "helper", "returns"}
    assert len(sites) > 150, len(sites)
    known = {
        ("ray_pipeline/data/readers.py", "holds no examples"),  # _Collector.add's callers
        ("ray_pipeline/data/examples.py", "is not an IOB tag"),  # tag_problem's return
        ("ray_pipeline/naming.py", "must not contain a NUL character"),  # a reason returned
        ("ray_pipeline/schema/search.py", "step and log cannot be used together"),
        ("ray_pipeline/loading.py", "required key is missing; add it"),  # _explain's return
        ("ray_pipeline/data/hub.py", "split … not in … has"),  # words between values
        ("ray_pipeline/pipeline.py", "set outputs_root to a directory you can write"),
    }
    for path, text in known:
        assert any(s.path == path and text in s.fragment for s in sites), (path, text)


def test_every_exit_2_message_is_documented() -> None:
    lines = _doc_lines(DOC.read_text(encoding="utf-8"))
    missing = [s for s in message_sites() if s.fragment and not _documented(s.fragment, lines)]
    assert not missing, (
        f"{len(missing)} exit-2 message(s) are not in {DOC.relative_to(ROOT)}; add each to "
        f"its group under {APPENDIX!r} (what triggers it, the key or file it names, the "
        "message):\n" + "\n".join(f"  {site}" for site in missing)
    )


def test_every_message_without_text_is_accounted_for() -> None:
    computed = {s.key: s for s in message_sites() if not s.fragment}
    unlisted = [site for key, site in computed.items() if key not in COMPUTED]
    assert not unlisted, (
        "exit-2 message(s) without literal text: give them some, or list them in COMPUTED "
        "with the reason they need no entry:\n" + "\n".join(f"  {s} -> {s.key!r}" for s in unlisted)
    )
    stale = sorted(set(COMPUTED) - set(computed))
    assert not stale, f"COMPUTED entries that match no message site any more: {stale}"


def test_unreachable_functions_still_raise() -> None:
    for key in UNREACHABLE:
        path, name = key.split("::")
        function = _modules()[path].functions[name]
        raises = [n for n in ast.walk(function) if isinstance(n, ast.Raise)]
        assert raises, f"UNREACHABLE entry {key} raises nothing any more: drop it"


def _removed_keys() -> list[tuple[str, str]]:
    """(key, advice) of each key the schema reports as removed (``REMOVED_KEYS``)."""
    removed = _modules()["ray_pipeline/schema/stages.py"].constants["REMOVED_KEYS"]
    assert isinstance(removed, ast.Dict) and removed.values
    return [
        (ast.unparse(key) if key else "", _longest(_direct(value)))
        for key, value in zip(removed.keys, removed.values, strict=True)
    ]


def test_the_appendix_quotes_only_messages_the_code_writes() -> None:
    texts = {t for site in message_sites() for t in (site.fragment, *site.texts) if t}
    texts |= {advice for _, advice in _removed_keys()}
    quoted = _quoted_messages(_appendix())
    assert len(quoted) > 100, len(quoted)
    stale = [
        f"  appendix line {line}: {span}"
        for line, span in quoted
        if not any(_documented(text, [span]) for text in texts)
    ]
    assert not stale, (
        f"{APPENDIX!r} in {DOC.relative_to(ROOT)} quotes message(s) that no code writes any "
        "more; update or drop them:\n" + "\n".join(stale)
    )


def test_removed_keys_are_documented() -> None:
    lines = _doc_lines(_appendix())
    for key, advice in _removed_keys():
        assert advice and _documented(advice, lines), key


def test_command_line_usage_errors_are_documented() -> None:
    """argparse exits 2 itself for a flag it cannot parse: each flag with a fixed set of
    choices or that is required is named in the appendix."""
    tree = ast.parse((PACKAGE / "cli.py").read_text(encoding="utf-8"))
    flags: set[str] = set()
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
            continue
        first = call.args[0] if call.args else None
        if call.func.attr != "add_argument" or not isinstance(first, ast.Constant):
            continue
        options = {k.arg: k.value for k in call.keywords}
        required = options.get("required")
        if "choices" in options or (isinstance(required, ast.Constant) and required.value):
            flags.add(str(first.value))
    assert flags >= {"--data", "--format", "--task"}, flags
    appendix = _appendix()
    for flag in sorted(flags):
        assert f"`{flag}`" in appendix, flag


if __name__ == "__main__":  # the sites and their fragments, for writing the appendix
    for site in message_sites():
        print(site)
