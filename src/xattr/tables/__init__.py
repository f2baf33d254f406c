"""Published tables (``published.yaml``) and the builder that puts our numbers beside them."""

from xattr.tables.build import build_table, load_published, summarise_run

__all__ = ["build_table", "load_published", "summarise_run"]
