"""Celery only: the app, thin tasks, the sync service, the scheduler and the registry client."""
