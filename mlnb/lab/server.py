"""The Jupyter server extension: the REST API on the server's project folder, and its shutdown.

An :class:`~jupyter_server.extension.application.ExtensionApp`, so that the
server's shutdown reaches :meth:`MlnbLab.stop_extension`, which stops every
``mlnb run`` started from the panel: a server that stops leaves no run behind.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from jupyter_server.extension.application import ExtensionApp

from mlnb.lab.handlers import Lab, routes


class MlnbLab(ExtensionApp):
    """mlnb's endpoints under ``/mlnb/api/`` for the project at the server's root folder."""

    name = "mlnb.lab"
    load_other_extensions = True
    lab: Lab | None = None

    def initialize_handlers(self) -> None:
        assert self.serverapp is not None  # an extension app is initialised by its server
        self.lab = Lab(Path(self.serverapp.root_dir).resolve())
        self.handlers.extend(routes(self.lab))

    async def stop_extension(self) -> None:
        if self.lab is not None:
            await asyncio.to_thread(self.lab.launcher.close)

    def current_activity(self) -> Any:
        """Runs under way count as activity (a server culling idle ones keeps running)."""
        return bool(self.lab and self.lab.launcher.running())
