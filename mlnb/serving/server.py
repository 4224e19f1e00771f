"""Starting a service: load the version an alias names, build the app, run uvicorn."""

from mlnb.serving.app import ServeError, create_app, serve

__all__ = ["ServeError", "create_app", "serve"]
