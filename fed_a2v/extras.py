"""FedA2V's optional extras: which modules each brings, and the one-line error naming the extra
to install when one is missing.

`pip install fed-a2v` installs what every node needs; the rest comes as extras (pyproject.toml's
[project.optional-dependencies]). Code that needs an extra calls `require` before it imports
from it, so a missing package is met as "X needs the `generate` extra: pip install
'fed-a2v[generate]'", not as a bare ImportError minutes into a run; `fed-a2v` prints that line
alone and exits 2. What a run can do without (TensorBoard events, report plots) is skipped with
one warning from `absent` instead.

The bottom layer: imports nothing of fed_a2v, so any layer may use it.
"""

from __future__ import annotations

import importlib.util
import logging

log = logging.getLogger(__name__)

# extra -> the modules (import names) it brings, as pyproject.toml's extras list their packages
# (tests/test_extras.py checks the two agree). Ray comes with flwr[simulation].
EXTRAS: dict[str, tuple[str, ...]] = {
    "generate": ("diffusers", "accelerate", "PIL"),
    "corpora": ("espeakng_loader", "pretty_midi"),
    "simulation": ("ray",),
    "plots": ("matplotlib", "tensorboard"),
    "wandb": ("wandb",),
}

# What a run skips, with a warning, without a module it can do without (`absent`).
SKIPPED = {"tensorboard": "TensorBoard events", "matplotlib": "report plots"}

EXIT_CODE = 2  # what `fed-a2v` exits with for a MissingExtra (as for a config error)

_warned: set[str] = set()  # extras `absent` has warned about in this process


def install_command(extra: str) -> str:
    """The command that installs `extra`."""
    return f"pip install 'fed-a2v[{extra}]'"


class MissingExtra(ImportError):
    """Something needs an extra that is not installed; the message is one line naming the
    extra and the command that installs it."""

    def __init__(self, message: str, extra: str = "") -> None:
        super().__init__(message)
        self.extra = extra


def missing(*modules: str) -> list[str]:
    """Those of `modules` (top-level import names) that cannot be imported here."""
    def found(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except ValueError:  # in sys.modules without a spec (e.g. made by hand): it is there
            return True

    return [m for m in modules if not found(m)]


def require(extra: str, *modules: str, what: str, note: str = "") -> None:
    """Raise MissingExtra unless `modules` (default: all of the extra's) can be imported.
    `what` names what needs them, e.g. "`fed-a2v generate`"; `note` is added in brackets."""
    absent = missing(*(modules or EXTRAS[extra]))
    if absent:
        raise MissingExtra(f"{what} needs the `{extra}` extra ({', '.join(absent)} not "
                           f"installed): {install_command(extra)}"
                           + (f" ({note})" if note else ""), extra)


def absent(extra: str) -> set[str]:
    """Which of the modules of `extra`, one a run can do without, are not installed. The first
    time in this process that one is missing, one warning says what is skipped (`SKIPPED`) and
    how to install the extra."""
    gone = set(missing(*EXTRAS[extra]))
    if gone and extra not in _warned:
        _warned.add(extra)
        what = " and ".join([SKIPPED[m] for m in SKIPPED if m in gone]
                            + sorted(gone - set(SKIPPED)))
        log.warning("%s skipped: the `%s` extra is not installed (%s missing): %s", what, extra,
                    ", ".join(sorted(gone)), install_command(extra))
    return gone
