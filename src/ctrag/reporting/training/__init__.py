"""Training recipes of the report methods, one module per method, kept apart from the inference code
(``ctrag train reporter``)."""
