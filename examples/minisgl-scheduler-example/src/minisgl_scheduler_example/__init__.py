"""An example third-party minisgl scheduler plugin (see least_loaded.py)."""
