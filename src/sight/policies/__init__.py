"""Request policies the services wire and the API applies: admission per model (503 past capacity) and the
per-team image quota (429)."""
