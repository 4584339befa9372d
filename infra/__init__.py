"""Cluster sizing and creation: LocalCluster by default, dask-kubernetes or an existing scheduler."""
