"""``mlnb serve``: a model version behind MLflow's scoring protocol, following an alias.

No notebook machinery, no pipelines, no engine (an import-linter contract):
a service starts in the time it takes to import MLflow and load the model.
"""
