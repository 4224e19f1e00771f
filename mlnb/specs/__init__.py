"""Specs: pipeline and monitor YAML in, validated frozen models out, every problem at once.

``document`` reads a YAML file into a pydantic model and places each problem
by file, line and key; ``pipeline`` validates a pipeline against its
notebooks (parameters, outputs, references, the DAG); ``monitor`` validates
a monitor spec and the pipeline it retrains with. No MLflow here (an
import-linter contract): validating a spec costs milliseconds.
"""
