"""What a run prints: our own progress lines by default, the libraries' output with ``--verbose``;
and never a credential written into a URI (``redact``).

By default Ray Tune's trial tables, Ray's start-up lines, MLflow's INFO lines and transformers'
per-model load reports are off; warnings and errors still show. ``--verbose`` (or
``RAY_PIPELINE_VERBOSE=1``) brings everything back. The setting travels to Ray workers in
their environment (see ``cluster.ensure_ray``).
"""

from __future__ import annotations

import logging
import math
import os
import re
from typing import Any

VERBOSE_ENV = "RAY_PIPELINE_VERBOSE"
STATUS_EVERY_S = 30.0
"""How often a running stage prints its status line (and an ETA) at most."""


def verbose() -> bool:
    """Whether the libraries' own console output is wanted (``--verbose``)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def set_verbose(on: bool) -> None:
    """Turn ``--verbose`` on for this process and the Ray workers it starts."""
    if on:
        os.environ[VERBOSE_ENV] = "1"


def quiet_libraries() -> None:
    """Silence the libraries' informational chatter in this process, unless ``--verbose``:
    transformers' model-load reports (a WARNING per model for the classifier head that is new
    by design) and MLflow's INFO lines. Their errors still show."""
    if verbose():
        return
    # MLflow sets its logger's level from this when it is first imported (here or in a Ray
    # worker started later, which inherits it); the level below covers an earlier import.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # Its "View run ... at: http://..." line at the end of every run on a tracking server.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    hf_logging.set_verbosity_error()


def duration(seconds: float) -> str:
    """``45 s``, ``6 min``, ``1 h 5 min``: a remaining time or an elapsed one, for people."""
    if not math.isfinite(seconds) or seconds < 0:
        return "unknown"
    if round(seconds) < 60:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h" if minutes == 0 else f"{hours} h {minutes} min"


_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s]*)@")
"""``scheme://userinfo@`` in a text; the userinfo runs to the authority's last ``@``."""


def redact(text: str) -> str:
    """``text`` with the credentials of every URI in it masked: the password of
    ``scheme://user:password@host`` (``postgresql://u:***@db/mlflow``), a bare token of
    ``scheme://token@host``. The one place that does it: what is printed or recorded (console
    lines, errors, config.resolved.yaml, MLflow params and tags) passes through here."""

    def mask(match: re.Match[str]) -> str:
        user, colon, _ = match["userinfo"].partition(":")
        return f"{match['scheme']}{user}:***@" if colon else f"{match['scheme']}***@"

    return _USERINFO.sub(mask, text)


def redacted(data: Any) -> Any:
    """``data`` (plain data: a dumped config, a record) with ``redact`` applied to every string."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {key: redacted(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [redacted(value) for value in data]
    return data
