"""The dashboard at /ui/: server-rendered pages of the images, tags, states and sync problems
an account can see, live through the API's events hub (SPEC §8). It imports the API's queries
and code paths; the API never imports it (api/extensions.py mounts it)."""
