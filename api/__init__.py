"""HTTP only: the aiohttp app serving the Tutum v1 Images API."""
