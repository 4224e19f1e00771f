"""``mlnb serve``: a model version behind MLflow's scoring protocol, following an alias.

``server`` starts a service (:func:`~mlnb.serving.server.serve`,
:func:`~mlnb.serving.server.create_app`, the public entry points); ``app`` is
its HTTP front; ``auth`` the tokens file and the check of a request's token;
``state`` the version served, the alias follower and health; ``metrics`` its
Prometheus metrics; ``scoring`` one request → predictions, with the request
parsers and signature checks in ``parsing``.

No notebook machinery, no pipelines, no engine (an import-linter contract):
a service starts in the time it takes to import MLflow and load the model.
"""
