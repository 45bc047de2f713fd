"""The `registry-sync` command: the only place that knows both `api` and `worker`."""
