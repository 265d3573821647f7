"""Directory-name safety and the variant naming scheme."""

from __future__ import annotations

import pytest

from ray_pipeline.naming import (
    check_safe_name,
    unsafe_name_reason,
    variant_base_name,
    variant_name,
    variant_number,
)


@pytest.mark.parametrize("name", ["minilm", "tiny-bert", "bert_base.v2", "A1"])
def test_safe_names(name: str) -> None:
    assert unsafe_name_reason(name) is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("..", ".."),
        ("a..b", ".."),
        ("/etc", "separators"),
        ("a/b", "separators"),
        ("a\\b", "separators"),
        ("a\x00b", "NUL"),
        (".hidden", "start with a letter or digit"),
        ("has space", "only letters"),
        ("x" * 101, "at most 100"),
    ],
)
def test_unsafe_names(name: str, reason: str) -> None:
    assert reason in (unsafe_name_reason(name) or "")
    with pytest.raises(ValueError, match="backbone name"):
        check_safe_name(name, "backbone name")


def test_variant_names_round_trip() -> None:
    assert variant_base_name("hpo", "minilm") == "hpo_minilm"
    assert variant_base_name("final", "minilm") == "final_minilm"
    assert variant_base_name("hpo", "minilm", "study_{backbone}") == "study_minilm"
    assert [variant_name("hpo_b", n) for n in (1, 2, 10)] == ["hpo_b", "hpo_b_v2", "hpo_b_v10"]
    for n in (1, 2, 10):
        assert variant_number("hpo_b", variant_name("hpo_b", n)) == n
    with pytest.raises(ValueError):
        variant_name("hpo_b", 0)


@pytest.mark.parametrize("foreign", ["hpo_b_v1", "hpo_bb", "hpo_b_vx", "hpo_c_v2", "hpo_b_v2_v3x"])
def test_foreign_names_are_not_variants(foreign: str) -> None:
    assert variant_number("hpo_b", foreign) is None


def test_backbone_sharing_a_prefix_is_not_a_variant() -> None:
    # hpo_b_v2 belongs to backbone "b"; backbone "b_v2" would have base "hpo_b_v2".
    assert variant_number("hpo_b_v2", "hpo_b_v2") == 1
    assert variant_number("hpo_b", "hpo_b_v2") == 2
