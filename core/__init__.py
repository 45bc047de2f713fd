"""What the API and the worker both need: settings, logging, database access, domain rules.

`api` and `worker` import from here and never from each other.
"""
