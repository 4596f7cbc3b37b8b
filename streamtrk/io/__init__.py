"""Event file formats: recordings (and readers of external data sets)."""
