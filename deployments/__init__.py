"""Deployments of every flow: ``prefect.yaml`` and a ``serve`` entry point."""
