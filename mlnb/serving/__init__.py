"""``mlnb serve``: a model version behind MLflow's scoring protocol, following an alias.

``server`` starts a service (:func:`~mlnb.serving.server.serve`,
:func:`~mlnb.serving.server.create_app`, the public entry points); ``app`` is
its HTTP front; ``auth`` the tokens file and the check of a request's token;
``state`` the version served, the alias follower and health; ``metrics`` its
Prometheus metrics; ``scoring`` one request → predictions, with the request
bounds and the fast path in ``parsing``; ``openapi`` the ``/openapi.json``
description and the ``/docs`` page; ``workers`` several server processes on
one port. The defaults the command line shows are here, so that ``mlnb
--help`` imports nothing heavy.

No notebook machinery, no pipelines, no engine (an import-linter contract):
a service starts in the time it takes to import MLflow and load the model.
"""

MAX_BODY_BYTES = 10 * 2**20  # the largest request body taken (larger: 413)
TIMEOUT_SECONDS = 60.0  # a request's scoring (then 504), as mlflow models serve's --timeout
