"""The engine: one scheduler for every backend (see ARCHITECTURE.md "The engine")."""
