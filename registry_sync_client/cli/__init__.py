"""The `tutum` command line tool, built on registry_sync_client."""
