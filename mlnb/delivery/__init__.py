"""Pipeline CI/CD: lint (``mlnb check``), smoke tests (``mlnb test``), bundles
(``mlnb build``, with mlnb vendored as a wheel), deployments (``mlnb deploy``)
and new projects (``mlnb init``).
"""
