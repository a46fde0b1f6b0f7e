"""The built-in corpora by `dataset.name`, each generated on first use in the ESC-50 layout
(`generator.ensure_corpus`): `synthetic` (the default), `speech` and `instruments`."""

from __future__ import annotations

from .generator import Generator
from .instruments import INSTRUMENTS_CORPUS
from .speech import SPEECH
from .synthetic import SYNTHETIC

BUILTIN: dict[str, Generator] = {g.name: g for g in (SYNTHETIC, SPEECH, INSTRUMENTS_CORPUS)}
