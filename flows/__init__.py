"""Prefect flows, one per job, and the ``shadeflow`` command line."""
