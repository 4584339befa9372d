"""Prefect tasks: thin wrappers over ``shadeflow.core`` (retries, logging, artifacts, Dask graphs)."""
