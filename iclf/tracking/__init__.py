"""Experiment tracking adapters (MLflow); imported only by the sweep layer and the CLI."""
