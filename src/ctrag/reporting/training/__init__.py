"""Training recipes of the report methods, kept apart from the inference code (``ctrag train reporter``)."""
