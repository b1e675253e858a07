"""Plain callbacks that the core (data/, model/) uses to report progress, log and honour cancel.

The Processing algorithms adapt a QgsProcessingFeedback into one of these; scripts and
notebooks use the defaults (silent, never cancelled) or pass their own functions.
"""
from dataclasses import dataclass, field
from typing import Callable


class Cancelled(Exception):
    """Raised by the core when the user asked to stop."""


def _noop(*_args, **_kwargs):
    return None


def _never():
    return False


@dataclass
class Callbacks:
    progress: Callable[[float], None] = field(default=_noop)  # fraction 0..1
    log: Callable[[str], None] = field(default=_noop)
    is_cancelled: Callable[[], bool] = field(default=_never)

    def check_cancel(self):
        if self.is_cancelled():
            raise Cancelled("cancelled by the user")


def ensure(callbacks):
    """Return `callbacks`, or silent defaults when it is None."""
    return callbacks if callbacks is not None else Callbacks()
