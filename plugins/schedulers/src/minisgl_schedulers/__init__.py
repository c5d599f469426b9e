"""minisgl-schedulers: dispatch and queue policies."""
