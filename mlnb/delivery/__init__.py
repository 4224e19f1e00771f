"""Pipeline CI/CD: lint (``mlnb check``), smoke tests (``mlnb test``), bundles
(``mlnb build``), deployments (``mlnb deploy``) and new projects (``mlnb init``).
"""
