"""Durable, team-scoped batch jobs: storage (store), the work queue (queue), the runner, the sweep."""
