"""The ZeroMQ control plane: a ROUTER socket that serves commands (metrics, warm,
flush_cache, plugins, set_scheduler, drain, resume, and any command a plugin registers)."""
