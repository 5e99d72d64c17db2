"""HTTP layer: wire types, routes, middleware. Knows nothing about torch."""
