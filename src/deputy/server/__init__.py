"""HTTP adapter: the ASGI app, its routes and error rendering."""
