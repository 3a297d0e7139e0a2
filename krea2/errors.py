"""Errors the engine raises. Each carries one human-readable line; none should reach a user as a traceback."""

from __future__ import annotations


def error_summary(error: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message` (at most `limit` characters of it), for one-line logs and status reasons.
    An exception with an empty message gives its type alone."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:limit]}" if lines else type(error).__name__


class Krea2Error(Exception):
    """Base class: `str(error)` is a complete, user-facing sentence."""


class InvalidRequest(Krea2Error):
    """A request field is out of range or of the wrong type. Names the field and the value."""

    def __init__(self, field: str, value: object, problem: str) -> None:
        try:
            shown = repr(value)
        except ValueError:  # an int beyond Python's 4300-digit str() limit
            shown = "a number too large to show"
        if len(shown) > 60:
            shown = shown[:57] + "..."
        # None is a field left out: "(got None)" says nothing the problem does not ("height: must be given with...").
        super().__init__(f"{field}: {problem}" + ("" if value is None else f" (got {shown})"))
        self.field = field
        self.value = value
        self.problem = problem


class LoadError(Krea2Error):
    """A checkpoint could not be loaded; the message says why and what to do."""


class NotReady(Krea2Error):
    """The checkpoint asked for is still loading, or failed to load."""


class FilterUnavailable(NotReady):
    """The content filter is required here and is not ready (still loading, or failed to load): fail closed."""


class ContentBlocked(Krea2Error):
    """The content policy refused a generation: its prompt matched the block list, or its images were flagged by the
    classifier. `request` is the request as far as it got (seeded once images were made), for the history row."""

    def __init__(self, message: str, request: object = None) -> None:
        super().__init__(message)
        self.request = request


class Cancelled(Krea2Error):
    """The generation was cancelled by the user before it finished."""

    def __init__(self, message: str = "Generation cancelled.") -> None:
        super().__init__(message)


class GenerationFailed(Krea2Error):
    """The model ran but the output is unusable (NaN, all black) or the device ran out of memory."""


class NonFiniteImage(GenerationFailed):
    """The decoded image holds NaN or infinite values."""


class LoraError(Krea2Error):
    """A LoRA cannot be found, read or applied; the message names the file and what was expected."""
