"""Measurement algorithms: pure functions over numpy arrays."""
