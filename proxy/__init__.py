"""annotation-proxy: a caching reverse proxy for Label Studio's ``GET /api/annotations/{id}/``."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("annotation-proxy")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
