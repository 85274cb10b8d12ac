"""Training recipes of the report methods (one module per method)."""
