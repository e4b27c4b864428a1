"""Measurement: time samples, peak memory, numerical error. Knows nothing of implementations."""
