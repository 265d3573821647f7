"""Hypothesis strategies for the front-door fuzz (``tests/test_fuzz_front_door.py``): config
overrides (``overrides``) and data files (``data_case``), each mostly one defect away from
valid input so that the checks behind the first ones run too."""

from __future__ import annotations

import csv
import io
import json
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st
from pydantic import BaseModel

from ray_pipeline.loading import nested_models
from ray_pipeline.schema import PipelineConfig, TrainingParams

# ------------------------------------------------------------------------------ config overrides

_EXCLUDED = {"outputs_root", "storage.uri", "tracking.tracking_uri"}
"""Keys not fuzzed with free values: where outputs go (the property watches it), and URIs that
validate would probe over the network."""

ODD_NAMES = ["", ".", "..", "a/b", "a\\b", "x" * 101, "nul\x00", "-x", ".hidden", "é", " a", "a b"]
ODD_NAMES += ["{backbone}" * 12, "{backbone}/x", "x" * 100]  # study_name templates too
INF, NAN = float("inf"), float("nan")
INT_EDGES = [0, -1, 2**31, 2**32, 2**63, 10**30, -(10**30)]
FLOAT_EDGES = [INF, -INF, NAN, 1e300, 1e-300, -0.0, 0.5, -1.0]
BOUNDARY = [1, 2, *INT_EDGES, *FLOAT_EDGES]
"""Numbers at the edges: zero, negatives, non-finite floats, ints past 32 and 64 bits."""
EDGES = [INF, NAN, 1e300, 1e-300, 0, -1, 10**30]
"""The fewer of them that a search-space entry's bounds and step take."""
PATHS = ["nowhere.csv", "/nonexistent/x", "{data_cache}/x", "."]
SAMPLERS = ["grid", "cmaes", "qmc", "gp", "nsga2", "tpe"]
RAW_YAML = [
    *["&a [*a]", "&a {x: *a}", "!!binary aGk=", "!!set {a, b}", "!!python/name:os.system"],
    *["2020-01-01", "~", "0x1F", "1_000", ".nan", "-.inf", "1.0e+400", "yes"],
    *["{a: 1, a: 2}", "[", "'unterminated", "<<: {a: 1}", "{type: float}", "[[], {}]", ""],
]
"""YAML that parses to something odd: recursive aliases, tags, dates, broken syntax."""

NUMBERS: list[st.SearchStrategy[Any]] = [st.sampled_from(BOUNDARY), st.integers(-5, 300)]
scalars: st.SearchStrategy[Any] = st.one_of(
    [st.none(), st.booleans(), *NUMBERS, st.floats(), st.sampled_from(ODD_NAMES), st.text()]
)
wild = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _one_in(n: int, draw: st.DrawFn) -> bool:
    """True about once in ``n`` draws (a middle value: Hypothesis draws the ends more often)."""
    return draw(st.integers(0, n - 1)) == n // 2


def _mostly(draw: st.DrawFn, typed: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> Any:
    """A value of ``typed`` three times in four, else of ``other``."""
    return draw(other if _one_in(4, draw) else typed)


def _leaf_types(annotation: Any) -> list[Any]:
    """The types a field's annotation allows (through unions and ``Annotated``); a ``Literal``
    stands for its values."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _leaf_types(args[0])
    if origin in (typing.Union, types.UnionType):
        return [leaf for arg in args for leaf in _leaf_types(arg)]
    return list(args) if origin is typing.Literal else [annotation]


KIND_VALUES: dict[Any, list[Any]] = {
    bool: [True, False],
    int: INT_EDGES,
    float: FLOAT_EDGES,
    str: ODD_NAMES,
    Path: PATHS,
}


def _typed(annotation: Any) -> st.SearchStrategy[Any]:
    """Values of the kinds a field takes, each as likely: null, its literals, edge numbers,
    odd names, odd paths."""
    values = [None]
    for leaf in _leaf_types(annotation):
        values += KIND_VALUES.get(leaf, [leaf] if isinstance(leaf, str) else [])
    return st.sampled_from(values)


def _schema_keys(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, annotation) of every field of ``model`` and the models under it (a list's
    models at position 0)."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        yield key, field.annotation
        inner = nested_models(field.annotation)
        if len(inner) == 1 and typing.get_origin(field.annotation) is not dict:
            step = ".0." if typing.get_origin(field.annotation) is list else "."
            yield from _schema_keys(inner[0], key + step)


SCHEMA_KEYS = dict(kv for kv in _schema_keys(PipelineConfig) if kv[0] not in _EXCLUDED)
LEAF_KEYS = sorted(k for k, annotation in SCHEMA_KEYS.items() if not nested_models(annotation))
NUMERIC_PARAMS = [
    n for n, f in TrainingParams.model_fields.items() if {int, float} & {*_leaf_types(f.annotation)}
]
PARAMS = [*TrainingParams.model_fields, "lr"]


def _render(value: Any) -> str:
    """``value`` as the YAML text after ``key=``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, allow_unicode=True)
    return text.removesuffix("\n...\n").rstrip("\n")


@st.composite
def schema_override(draw: st.DrawFn) -> str:
    """A key of the schema set to a value of its kind (mostly) or to anything."""
    key = draw(st.sampled_from(sorted(SCHEMA_KEYS)))
    return f"{key}={_render(_mostly(draw, _typed(SCHEMA_KEYS[key]) | st.integers(1, 8), wild))}"


def _fitting_entry(name: str, variant: int) -> dict[str, Any]:
    """A search-space entry that fits TrainingParams field ``name``: a range (``variant`` 1:
    with a step, 2: on a log scale) or its choices."""
    leaves = _leaf_types(TrainingParams.model_fields[name].annotation)
    if not {int, float} & {*leaves}:
        return {
            "type": "categorical",
            "choices": [v for k in leaves for v in KIND_VALUES.get(k, [k])],
        }
    if int in leaves:
        entry: dict[str, Any] = {"type": "int", "low": 1, "high": 8, "step": 2}
    else:
        entry = {"type": "float", "low": 0.01, "high": 0.1, "step": 0.01}
    if variant != 1:  # 0: a plain range, 2: on a log scale
        entry.pop("step")
    return entry | ({"log": True} if variant == 2 else {})


BOUNDS = st.sampled_from(["low", "high", "step"])
ENTRY_FIELDS = {
    "type": st.sampled_from(["float", "int", "categorical", "bool"]),
    "log": st.booleans(),
    "choices": st.lists(scalars, max_size=4),
    "when": st.dictionaries(st.sampled_from(PARAMS), st.lists(scalars, max_size=2), max_size=2),
}


@st.composite
def search_entry(draw: st.DrawFn, broken: bool) -> tuple[str, dict[str, Any]]:
    """(parameter, entry): an entry fitting a numeric parameter (mostly); a ``broken`` one has
    one or two fields set to edge numbers (mostly its bounds and step) or to anything, or
    dropped."""
    name = _mostly(draw, st.sampled_from(NUMERIC_PARAMS), st.sampled_from(PARAMS))
    fitting = name if name in TrainingParams.model_fields else "learning_rate"
    entry = _fitting_entry(fitting, draw(st.sampled_from([1, 0, 2, 1])))  # 1: with a step
    for _ in range(draw(st.integers(1, 2)) if broken else 0):
        field = _mostly(draw, BOUNDS, st.sampled_from(sorted(ENTRY_FIELDS)))
        if _one_in(8, draw):
            entry.pop(field, None)
        else:
            entry[field] = _mostly(draw, ENTRY_FIELDS.get(field, st.sampled_from(EDGES)), wild)
    return name, entry


@st.composite
def search_case(draw: st.DrawFn) -> list[str]:
    """A search space of up to three entries, one of them broken, perhaps with a sampler, a
    trial count and an enqueued point (each mostly valid, so the checks of the whole space and
    its sampler run)."""
    fitting = draw(st.lists(search_entry(broken=False), max_size=2))
    space = dict([draw(search_entry(broken=True)), *fitting])
    cases = [f"hpo.search_space={_render(space)}"]
    if draw(st.booleans()):
        cases.append(f"hpo.sampler={draw(st.sampled_from(SAMPLERS))}")
    if draw(st.booleans()):
        samples = _mostly(draw, st.integers(1, 6), st.sampled_from(BOUNDARY))
        cases.append(f"hpo.num_samples={_render(samples)}")
    if draw(st.booleans()):
        point = {name: _mostly(draw, st.just(e.get("low")), scalars) for name, e in space.items()}
        cases.append(f"hpo.enqueue={_render([point])}")
    return cases


@st.composite
def odd_override(draw: st.DrawFn) -> str:
    """A made-up key (at the top or inside a known section), or any key (an argument starting
    with '-' aside: argparse takes it for an option) set to odd YAML or text."""
    known = draw(st.sampled_from(sorted(SCHEMA_KEYS)))
    if draw(st.booleans()):
        cut = known.split(".")[: draw(st.integers(0, 3))]
        name = draw(st.from_regex(r"[a-z_]{1,10}", fullmatch=True) | st.sampled_from(["0", "x.y"]))
        return f"{'.'.join([*cut, name])}={_render(draw(scalars))}"
    key = _mostly(draw, st.just(known), st.text(max_size=10).filter(lambda k: "=" not in k))
    return f"{key.lstrip('-')}={draw(st.sampled_from(RAW_YAML) | st.text(max_size=20))}"


@st.composite
def overrides(draw: st.DrawFn) -> list[str]:
    """One of three: many keys of the schema at once (each field's own checks run, whatever
    the others hold), one or two (so that the checks across fields and of the backbones and
    data run too), with a made-up key or raw YAML now and then, or a search space."""
    kind = draw(st.sampled_from(["many", "search", "few", "many", "search"]))
    if kind == "search":
        return draw(search_case())
    if kind == "many":  # leaves only: a section set to a value would hide the keys inside it
        keys = draw(st.lists(st.sampled_from(LEAF_KEYS), unique=True, min_size=30, max_size=70))
        return [f"{key}={_render(_mostly(draw, _typed(SCHEMA_KEYS[key]), wild))}" for key in keys]
    first = _mostly(draw, schema_override(), odd_override())
    return [first, *draw(st.lists(schema_override(), max_size=1))]


# ------------------------------------------------------------------------------ data files

LABELS = ["great", "other"]
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
ODD_LABELS = ["", " ", "Great", "great ", "neutral", "1", None, 1, 2.5, True, ["great"]]
ODD_TAGS = ["PER", "B-", "-PER", "b-per", "E-ORG", "S-MISC", "O-X", "B-PER-X", "0", "I-"]
HEADERS = [["score", "review"], ["review"], ["text", "label"], ["review", "score", "extra"], [""]]
ENCODINGS = ["latin-1", "cp1252", "utf-16", "utf-32"]
HUGE = "x" * 150_000
text_cell = st.text(max_size=16) | st.sampled_from(
    ["Café crème", "日本語", "a,b", 'say "hi"', "\n"]
)

TABLE_DEFECTS = ["header", "ragged", "label", "text", "few rows", "duplicate column"]
BYTE_DEFECTS = ["encoding", "bom", "garbage", "huge line", "crlf", "cr", "nul", "truncated"]
CONLL_DEFECTS = ["fields", "tag", "docstart", "whitespace", "lonely token", "no sentences"]


def _defects(draw: st.DrawFn, kinds: list[str]) -> list[str]:
    """None (half the time), one or two of ``kinds``."""
    return draw(
        st.lists(st.sampled_from(kinds), min_size=draw(st.sampled_from([0, 0, 1, 2])), max_size=2)
    )


@st.composite
def table(draw: st.DrawFn) -> tuple[list[str], list[list[Any]]]:
    """A header and rows of a review and a label, with up to two defects."""
    header: list[Any] = ["review", "score"]
    rows: list[list[Any]] = [
        list(r)
        for r in draw(
            st.lists(st.tuples(text_cell, st.sampled_from(LABELS)), min_size=4, max_size=16)
        )
    ]
    for defect in _defects(draw, TABLE_DEFECTS):
        row = rows[draw(st.integers(0, len(rows) - 1))] if rows else []
        if defect == "header":
            header = draw(st.sampled_from(HEADERS))
        elif defect == "ragged":
            row[:] = row[: draw(st.integers(0, 1))] if draw(st.booleans()) else [*row, "extra"]
        elif defect == "label" and row:
            row[-1] = draw(st.sampled_from(ODD_LABELS))
        elif defect == "text" and row:
            row[0] = draw(wild)
        elif defect == "few rows":
            rows = rows[: draw(st.integers(0, 1))]
        elif defect == "duplicate column":
            header = [header[0], *header]
    return header, rows


def _encoded(draw: st.DrawFn, text: str, huge: str) -> bytes:
    """``text`` as UTF-8 bytes, with up to two defects of encoding, line ends or length."""
    encoding = "utf-8"
    defects = _defects(draw, BYTE_DEFECTS)
    for defect in defects:
        if defect == "encoding":
            encoding = draw(st.sampled_from(ENCODINGS))
        elif defect == "bom":
            text = "\ufeff" + text
        elif defect == "huge line":
            text += huge + "\n"
        elif defect in ("crlf", "cr"):
            text = text.replace("\n", "\r\n" if defect == "crlf" else "\r")
        elif defect == "nul":
            text = text.replace("e", "\x00", 1)
    data = text.encode(encoding, errors="replace")
    if "garbage" in defects:  # bytes that are no UTF-8
        at = draw(st.integers(0, 8)) * len(data) // 8
        data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
    if "truncated" in defects:  # mid-file, perhaps mid-character
        data = data[: draw(st.integers(1, 7)) * len(data) // 8]
    return data


@st.composite
def csv_file(draw: st.DrawFn) -> bytes:
    header, rows = draw(table())
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    return _encoded(draw, buffer.getvalue(), f"{HUGE},great")


@st.composite
def jsonl_file(draw: st.DrawFn) -> bytes:
    header, rows = draw(table())
    lines = [json.dumps(dict(zip(header, row, strict=False))) for row in rows]
    odd = st.sampled_from(
        ["", "   ", "[1, 2]", "{", '"text"', "null", '{"review": "a", "score": {}}']
    )
    if _one_in(3, draw):
        lines.insert(draw(st.integers(0, len(lines))), draw(odd))
    return _encoded(draw, "\n".join(lines) + "\n", json.dumps({"review": HUGE, "score": "great"}))


@st.composite
def parquet_file(draw: st.DrawFn) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    header, rows = draw(table())
    names = list(dict.fromkeys(str(h) for h in header if h)) or ["review"]
    columns: dict[str, list[Any]] = {
        name: [row[i] if i < len(row) and isinstance(row[i], str) else None for row in rows]
        for i, name in enumerate(names)
    }
    if _one_in(4, draw):  # a column of numbers, not of strings
        columns[names[-1]] = [draw(st.integers(0, 2) | st.none()) for _ in rows]
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    data = sink.getvalue()
    if "truncated" in _defects(draw, BYTE_DEFECTS):
        data = data[: draw(st.integers(1, 7)) * len(data) // 8]
    return data


@st.composite
def conll_file(draw: st.DrawFn) -> bytes:
    """Sentences of ``token POS chunk tag`` lines, with up to two defects: a line with other
    fields, tags outside the IOB scheme, ``-DOCSTART-`` lines, whitespace-only lines."""
    token = st.sampled_from(["Maria", "smiled", "Café", "日本"]) | st.from_regex(
        r"[^\s]{1,8}", fullmatch=True
    )
    line = st.builds(lambda t, g: f"{t} NNP O {g}", token, st.sampled_from(TAGS))
    sentences = draw(st.lists(st.lists(line, min_size=1, max_size=5), min_size=2, max_size=8))
    for defect in _defects(draw, CONLL_DEFECTS):
        sentence = sentences[draw(st.integers(0, len(sentences) - 1))] if sentences else []
        at = draw(st.integers(0, len(sentence)))
        if defect == "fields":
            sentence.insert(at, draw(st.sampled_from(["Maria", "Maria B-PER", "a b c d e", "\tO"])))
        elif defect == "tag":
            sentence.insert(at, f"Maria NNP O {draw(st.sampled_from(ODD_TAGS))}")
        elif defect == "docstart":
            sentence.insert(at, "-DOCSTART- -X- -X- O")
        elif defect == "whitespace":
            sentence.insert(at, draw(st.sampled_from([" ", "\t", "\x0b", "\u3000"])))
        elif defect == "lonely token":
            sentence.insert(at, "lonely")
        elif defect == "no sentences":
            sentences = []
    separator = draw(st.sampled_from([" ", "\t"]))
    text = "\n\n".join("\n".join(sentence) for sentence in sentences).replace(" ", separator)
    return _encoded(draw, text + "\n", f"{HUGE} NNP O O")


FORMATS: dict[str, Callable[[], st.SearchStrategy[bytes]]] = {
    "csv": csv_file,
    "jsonl": jsonl_file,
    "parquet": parquet_file,
    "conll": conll_file,
}


@st.composite
def data_case(draw: st.DrawFn) -> tuple[str, bytes, str]:
    """(declared format, file bytes, which split(s) the file is): mostly a file in its declared
    format, sometimes one in another (or nothing, or a few bytes)."""
    declared = draw(st.sampled_from(sorted(FORMATS)))
    content = declared
    if _one_in(10, draw):
        family = ["conll"] if declared == "conll" else ["csv", "jsonl", "parquet"]
        content = draw(st.sampled_from(family))
    if _one_in(20, draw):
        data = draw(st.sampled_from([b"", b"\n", b"\xef\xbb\xbf", b"\x00\x00", b"\xff\xfe"]))
    else:
        data = draw(FORMATS[content]())
    roles = ["train+test", "train alone"]  # alone: the test split is carved out of it
    if declared in ("csv", "conll"):  # the shipped splits beside it are in these formats
        roles += ["train", "test", "validation"]
    role = draw(st.sampled_from(roles))
    return declared, data, role
