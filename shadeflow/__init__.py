"""shadeflow: Prefect-orchestrated flatfield (shading) correction for microscopy.

The code lives in the top-level folders of the repository, installed under this namespace:
``shadeflow.core`` (pure computation and storage), ``shadeflow.tasks`` (Prefect tasks),
``shadeflow.flows`` (flows and the CLI), ``shadeflow.infra`` (clusters) and
``shadeflow.deployments``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("shadeflow")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
