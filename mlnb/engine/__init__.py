"""The engine: papermill on pooled, pre-started kernels forked from a warm server.

The only code that imports papermill, nbclient and jupyter_client (an
import-linter contract). ``execute`` runs one notebook through papermill's
``mlnb`` engine; ``kernels`` keeps the pool; ``forkserver`` and ``_zygote``
fork kernels from a process that imported ipykernel once.
"""
