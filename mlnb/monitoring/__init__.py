"""Continuous training and monitoring: checks on a schedule, drift, retraining, status."""
