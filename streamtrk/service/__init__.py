"""The daemon (``streamtrk serve``): ingest, dynamic batching, reconstruction, emission,
metrics and health, each stage in its own thread joined by bounded queues."""
