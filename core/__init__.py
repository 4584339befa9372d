"""Pure computation and storage adapters. Imports neither Prefect nor a Dask cluster."""
