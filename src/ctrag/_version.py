"""The package version, in a module of its own so that library code can record it without importing the package
root (which would run ``ctrag/__init__.py`` and its lazy attributes from inside a submodule)."""

__version__ = "0.1.0"
