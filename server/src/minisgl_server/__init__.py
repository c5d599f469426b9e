"""minisgl-server: the Litestar HTTP server and engine processes."""
