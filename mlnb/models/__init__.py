"""Model CD: registered versions with their lineage, the gate, and the aliases it moves.

``registry`` registers what a pipeline delivers, keeps ``champion`` and its
history, and moves the alias; ``gate`` scores a challenger against the champion
with MLflow's evaluation and decides. The registry calls the gate, never the
other way round; the one error both raise lives here, beside them.
"""

from __future__ import annotations

from mlnb.errors import MlnbError


class RegistryError(MlnbError):
    """A model cannot be registered, gated or promoted."""
