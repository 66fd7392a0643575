"""The consume pipeline, written once for every transport (DESIGN 5)."""
