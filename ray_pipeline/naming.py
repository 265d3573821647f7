"""Names that become directory names: validation and the variant naming scheme.

Variant 1 is the base name (``hpo_minilm``); later variants append ``_v<N>``
(``hpo_minilm_v2``). Names are deterministic: restore and reuse depend on them.
"""

from __future__ import annotations

import re
from typing import Literal

VariantStage = Literal["hpo", "final"]
"""Stages whose outputs live in numbered variants."""

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VARIANT_SUFFIX = re.compile(r"^(?P<base>.+)_v(?P<n>[0-9]+)$")
_MAX_LEN = 100


def unsafe_name_reason(name: str) -> str | None:
    """Why ``name`` cannot be used as one directory name, or None when it can.

    Rejects anything that could escape the outputs root or confuse the layout:
    empty names, ``.``/``..``, separators, NUL and other control characters.
    """
    if not name:
        return "must not be empty"
    if "\x00" in name:
        return "must not contain a NUL character"
    if "/" in name or "\\" in name:
        return "must not contain path separators ('/' or '\\')"
    if name in {".", ".."} or ".." in name:
        return "must not contain '..'"
    if len(name) > _MAX_LEN:
        return f"must be at most {_MAX_LEN} characters"
    if not _SAFE.match(name):
        return (
            "may use only letters, digits, '.', '_' and '-', and must start with a letter or digit"
        )
    return None


def check_safe_name(name: str, what: str) -> str:
    """Return ``name`` if it is a safe directory name, else raise ValueError naming ``what``."""
    reason = unsafe_name_reason(name)
    if reason is not None:
        raise ValueError(f"{what} {name!r} {reason}")
    return name


def variant_base_name(stage: VariantStage, backbone: str, template: str | None = None) -> str:
    """The name of a stage's first variant for one backbone (``hpo_<backbone>``).

    ``template`` is the configured study name; ``{backbone}`` inside it is replaced.
    """
    if template is None:
        return f"{stage}_{backbone}"
    return check_safe_name(template.replace("{backbone}", backbone), "study name")


def variant_name(base: str, number: int) -> str:
    """The directory name of variant ``number`` (1-based) of ``base``."""
    if number < 1:
        raise ValueError(f"variant numbers start at 1, but got {number}")
    return base if number == 1 else f"{base}_v{number}"


def variant_number(base: str, name: str) -> int | None:
    """The variant number that ``name`` encodes for ``base``, or None if it is not one."""
    if name == base:
        return 1
    match = _VARIANT_SUFFIX.match(name)
    if match is None or match.group("base") != base:
        return None
    number = int(match.group("n"))
    # "_v1" is never produced (variant 1 is the base name); treat it as foreign.
    return number if number >= 2 else None
