"""The models file (``MODELHOST_MODELS_FILE``): many models on several backends, organization and
project allow-lists, and reloading all of it on SIGHUP without dropping a request.

``load_catalog(path)`` checks a file (`CatalogError` names the file, model and field);
``ModelCatalog(settings).open()`` builds and starts its models; ``reload()`` swaps in a new
registry and drains the engines it no longer needs.
"""

from modelhost.catalog.reload import ModelCatalog
from modelhost.catalog.schema import Catalog, CatalogError, load_catalog

__all__ = ["Catalog", "CatalogError", "ModelCatalog", "load_catalog"]
