"""A property-based fuzz of the front door (issue 37): generated config overrides (wrong types,
out-of-range numbers, unknown keys, broken search-space entries, odd names, odd YAML) and
generated data files (empty, one row, other encodings, byte-order marks, ragged rows, missing
labels, huge lines, bad CoNLL columns and tags) go through ``validate`` (and ``data inspect``)
in process. The property: exit 0 or 2, never a traceback (an uncaught exception fails the
example); on 2 every problem line names a config key or a file; nothing is written under
``outputs_root``. The generators live in ``tests/fuzz_inputs.py``; inputs that once broke the
property run first every time (``_regression``).

In ``make test``: 520 configs and 210 data files (each through ``validate`` and ``data
inspect``), about 30 s. The examples are derandomized (a fixed seed: the same ones every
run, so CI cannot fail by chance), and Hypothesis keeps no example database and its caches
in a temporary directory (nothing is written into the checkout). For a longer,
randomized run of your own: ``RAY_PIPELINE_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_front_door.py``
(every test then runs that many examples with a fresh random seed; a failure prints the
``@seed`` that reproduces it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ray_pipeline.cli import main
from ray_pipeline.schema import PipelineConfig
from tests.conftest import CONFIG_DIR
from tests.fuzz_inputs import data_case, overrides

Capsys = pytest.CaptureFixture[str]

_LONG_RUN = os.environ.get("RAY_PIPELINE_FUZZ_EXAMPLES")
CONFIG_EXAMPLES = int(_LONG_RUN or 520)
DATA_EXAMPLES = int(_LONG_RUN or 210)


def _fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=_LONG_RUN is None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=False,
    )


# ------------------------------------------------------------------------------ the front door


class FrontDoor:
    """Runs the CLI in process on experiments written under ``root``; checks the property."""

    def __init__(self, root: Path, capsys: Capsys) -> None:
        self.root = root
        self.outputs = root / "outputs"
        self.capsys = capsys
        self.reviews = self._experiment("reviews.yaml", "tiny_reviews.yaml", "tiny_bert.yaml")
        self.ner = self._experiment("ner.yaml", "tiny_ner.yaml", "tiny_bert_random.yaml")

    def _experiment(self, name: str, data: str, model: str) -> Path:
        doc = {
            "include": {
                "data": str(CONFIG_DIR / "data" / data),
                "model": str(CONFIG_DIR / "model" / model),
                "hpo": str(CONFIG_DIR / "hpo" / "smoke.yaml"),
            },
            "experiment": {"name": "fuzz"},
            "outputs_root": str(self.outputs),
        }
        if data.startswith("tiny_ner"):
            doc["hpo"] = {"objective": {"metric": "entity_f1"}}
        path = self.root / name
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        return path

    def check(self, command: list[str], exp: Path, overrides: list[str], files: list[Path]) -> int:
        """Run ``command --config exp overrides``; assert the property; return the exit code."""
        # outputs_root last: no generated override may move it out of sight
        argv = [*command, "--config", str(exp), *overrides, f"outputs_root={self.outputs}"]
        code = main(argv)
        out, err = self.capsys.readouterr()
        shown = f"{argv}\nstdout: {out[-2000:]}\nstderr: {err[-4000:]}"
        assert code in (0, 2), shown
        assert "Traceback" not in err + out, shown
        assert not self.outputs.exists(), f"wrote {list(self.outputs.rglob('*'))[:5]}: {shown}"
        if code == 2:
            named = [exp, *SHIPPED_DATA, *files], overrides
            unnamed = [line for line in _problem_lines(err) if not _names(line, *named)]
            assert not unnamed, f"names no key or file: {unnamed}\n{shown}"
        return code


SHIPPED_DATA = [*CONFIG_DIR.glob("data/tiny_*/*")]
TOP_KEYS = [*PipelineConfig.model_fields, "include"]
_KEY = re.compile(r"\b(?:" + "|".join(TOP_KEYS) + r")(?:[.\[:]|\s*$)")


def _problem_lines(err: str) -> list[str]:
    """The lines of an ``error: ...`` that state a problem (one, or a header's ``- `` items)."""
    lines = err.rstrip("\n").split("\n")  # not splitlines(): \x1e and co. may be in a key
    start = next((i for i, line in enumerate(lines) if line.startswith("error: ")), None)
    assert start is not None, f"exit 2 without an 'error: ' line:\n{err}"
    first = lines[start].removeprefix("error: ")
    items = [line.removeprefix("  - ") for line in lines[start + 1 :] if line.startswith("  - ")]
    return items if first.endswith(":") and items else [first]


def _names(line: str, files: list[Path], overrides: list[str]) -> bool:
    """Whether a problem line names a config key, one of ``files`` (its path or its name), or
    an override's key (or the whole override, when it has no key)."""
    if _KEY.search(line) or any(str(f) in line or f.name in line for f in files):
        return True
    keys = [o.partition("=")[0].strip() for o in overrides]
    named = [f"{k}:" for k in keys if k] + [f"{k}." for k in keys if k]
    return any(n in line for n in [*named, *overrides, *map(repr, overrides)])


@pytest.fixture
def front_door(tmp_path: Path, capsys: Capsys) -> FrontDoor:
    return FrontDoor(tmp_path, capsys)


# ------------------------------------------------------------------------------ the properties


def _regression(overrides: list[str]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """An input that once broke the property, run first every time (a traceback: an infinite
    or too finely stepped search bound, a grid longer than ``sys.maxsize``, a YAML alias inside
    its own anchor, HyperBand's bracket count for epochs past a float, a study name template
    too long once a backbone's name fills it in; a key with a newline, which split the error
    list)."""
    return example(overrides=overrides, ner=False)


def test_generated_config_overrides_exit_0_or_2(front_door: FrontDoor) -> None:
    codes: list[int] = []

    @_fuzz_settings(CONFIG_EXAMPLES)
    @given(overrides=overrides(), ner=st.booleans())
    @_regression(
        ["hpo.search_space={learning_rate: {high: .inf, low: 0.01, step: 0.01, type: float}}"]
    )
    @_regression(
        ["hpo.search_space.weight_decay={type: float, low: 0, high: 1.0e+300, step: 1.0e-300}"]
    )
    @_regression(
        [
            "hpo.sampler=grid",
            f"hpo.search_space={{batch_size: {{type: int, low: 1, high: {2**64}}}}}",
        ]
    )
    @_regression(["hpo.enqueue=&a [*a]"])
    @_regression(["0\n0=1"])
    @_regression(["hpo.scheduler.type=hyperband", f"hpo.training.epochs={10**400}"])
    @_regression(["hpo.checkpoint.study_name=" + "x" * 95 + "{backbone}"])
    def validate(overrides: list[str], ner: bool) -> None:
        exp = front_door.ner if ner else front_door.reviews
        codes.append(front_door.check(["validate"], exp, overrides, []))

    validate()
    assert len(codes) >= CONFIG_EXAMPLES, len(codes)
    assert 0 < codes.count(0) < len(codes), "the overrides should make both valid and bad configs"


def test_generated_data_files_exit_0_or_2(front_door: FrontDoor, tmp_path: Path) -> None:
    codes: list[int] = []

    @_fuzz_settings(DATA_EXAMPLES)
    @given(case=data_case())
    def validate_and_inspect(case: tuple[str, bytes, str]) -> None:
        declared, data, role = case
        path = tmp_path / f"split.{declared}"
        path.write_bytes(data)
        sets = [f"data.{r}_file={path}" for r in role.removesuffix(" alone").split("+")]
        if role.endswith(" alone"):
            sets.append("data.test_file=null")
        exp = front_door.ner if declared == "conll" else front_door.reviews
        overrides = [f"data.format={declared}", *sets]
        code = front_door.check(["validate"], exp, overrides, [path])
        codes.append(code)
        inspected = front_door.check(["data", "inspect"], exp, overrides, [path])
        assert inspected == 2 or code == 0, "inspect accepted data that validate refused"

    validate_and_inspect()
    assert len(codes) >= DATA_EXAMPLES, len(codes)
    assert 0 < codes.count(0) < len(codes), "the files should be both readable and bad"
