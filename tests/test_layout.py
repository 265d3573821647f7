"""The outputs layout has one owner, ``ray_pipeline/paths.py`` with the leaf module of its fixed
names, ``ray_pipeline/layout_names.py``: no other module constructs an ``OutputsLayout`` or
spells a file name of the outputs tree (string literals are checked), and the tree a stage
leaves is the one the layout describes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ray_pipeline.loading import load_config
from ray_pipeline.paths import OutputsLayout
from tests.builders import add_hpo_variant
from tests.conftest import MakeExp

PACKAGE = Path(__file__).resolve().parent.parent / "ray_pipeline"
LAYOUT = PACKAGE / "paths.py"
OWNERS = (LAYOUT, PACKAGE / "layout_names.py")
"""The modules that may spell a name of the outputs tree: the layout and its fixed names."""
FILE_NAME = re.compile(r"[\w.{}-]*\.(json|jsonl|db|journal|pt|yaml|yml|html|png|csv|txt|md)\b")
"""A file name, or a bare suffix (``".journal"``) that would make one."""
NOT_OUTPUTS = {
    "config.json": "a Hugging Face checkpoint's own config (models.py checks for it)",
    "dataset_dict.json": "a saved Hugging Face dataset (data/hub.py)",
    "demo.yaml": "the shipped demo experiment (loading.py)",
    "train.csv": "the demo data cache (data/demo.py)",
    "test.csv": "the demo data cache (data/demo.py)",
    "SOURCE.txt": "the demo data cache (data/demo.py)",
    ".csv": "an input data file's format, by suffix (data/splits.py)",
    ".jsonl": "an input data file's format, by suffix (data/splits.py)",
    ".json": "an input data file's format, by suffix (data/infer.py)",
    ".txt": "a CoNLL input file's usual suffix (data/infer.py)",
    ".yaml": "the experiment `init` writes and the shipped model configs (data/init_config.py)",
}
"""File names spelled outside the layout's modules that are not in the outputs tree."""


def _literals(path: Path) -> list[tuple[int, str]]:
    """The string constants of a module that can be (parts of) paths: not docstrings (module,
    class, function or attribute ones) and not prose (text with whitespace: messages)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        if id(node) not in docs and not any(c.isspace() for c in node.value)
    ]


def _file_names(literals: list[tuple[int, str]]) -> set[str]:
    return {m.group(0) for _, text in literals for m in FILE_NAME.finditer(text)}


def test_no_outputs_file_name_is_spelled_outside_the_layout_modules() -> None:
    owned = {name for owner in OWNERS for name in _file_names(_literals(owner)) if "{" not in name}
    assert {"hpo.json", "benchmark.json", "selection.json", "fold_state.json"} <= owned
    found = []
    for module in sorted(PACKAGE.rglob("*.py")):
        if module in OWNERS:
            continue
        for line, text in _literals(module):
            for match in FILE_NAME.finditer(text):
                name = match.group(0)
                # a name of the tree is never excused; a bare suffix the tree also uses may be
                if name not in NOT_OUTPUTS or (name in owned and not name.startswith(".")):
                    found.append(f"{module.relative_to(PACKAGE)}:{line}: {name!r}")
    assert not found, (
        "ask ray_pipeline.paths (or ray_pipeline.layout_names) for these paths instead:\n"
        + "\n".join(found)
    )


def test_outputs_layout_is_constructed_only_by_the_layout_module() -> None:
    sites = [
        f"{module.relative_to(PACKAGE)}:{number}"
        for module in sorted(PACKAGE.rglob("*.py"))
        if module != LAYOUT
        for number, line in enumerate(module.read_text(encoding="utf-8").splitlines(), 1)
        if "OutputsLayout(" in line
    ]
    assert not sites, f"use OutputsLayout.of(config): {sites}"


def test_an_hpo_variant_holds_the_files_the_layout_names(smoke_experiment: MakeExp) -> None:
    config = load_config(smoke_experiment())
    variant = add_hpo_variant(config, "tiny-bert", 0.7)
    files = variant.files
    assert variant.path == OutputsLayout.of(config).stage_dir("hpo", "tiny-bert") / variant.name
    assert files.record.is_file() and files.hpo_result.is_file()
    assert (files.best / "config.json").is_file()
    assert sorted(p.name for p in variant.path.iterdir()) == sorted(
        p.name for p in (files.record, files.hpo_result, files.best)
    )
