"""pytest plugin (not yet built)."""
