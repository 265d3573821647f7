"""The one error family of the package and the exit codes the CLI maps them to."""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class PipelineError(Exception):
    """A failure the user should read; the CLI prints it without a traceback."""

    exit_code = EXIT_RUNTIME


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where it is, what was given, and the fix."""

    where: str
    """Dotted config path (``hpo.search_space.lr.low``), CLI argument or file."""
    message: str
    """What is wrong and how to fix it."""
    source: str | None = None
    """The file (or ``command line``) the bad value came from, when known."""
    value: object = None
    """The offending value, when there is one."""
    has_value: bool = False

    def render(self) -> str:
        origin = f"{self.source}: " if self.source else ""
        shown = f" (got {self.value!r})" if self.has_value else ""
        return f"{origin}{self.where}: {self.message}{shown}"


class ConfigError(PipelineError):
    """Bad configuration or bad input: exit 2. The stage checks raise it before anything is
    written; where an input only exists once an earlier stage of the same run has finished
    (selection's candidates and latency limit, final training's source), the later stage
    raises it when it starts, and the earlier stages' results are kept."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, problems: list[Problem] | str, *, header: str | None = None) -> None:
        if isinstance(problems, str):
            problems = [Problem(where="input", message=problems)]
        self.problems = problems
        self.header = header
        super().__init__(self.render())

    @classmethod
    def at(cls, where: str, message: str) -> ConfigError:
        """One problem at ``where`` (a dotted config key, a file:line or an argument)."""
        return cls([Problem(where=where, message=message)])

    def render(self) -> str:
        lines = [p.render() for p in self.problems]
        if len(lines) == 1 and self.header is None:
            return lines[0]
        head = self.header or f"{len(lines)} problems"
        return "\n".join([head + ":", *("  - " + line for line in lines)])
