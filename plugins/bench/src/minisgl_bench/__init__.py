"""Benchmarks (`minisgl bench ...`): offline throughput against transformers peers, a
serving load generator for any OpenAI-compatible server, and the original mini-sglang's bench suite.
Every report states the machine, the model and settings, and the git revision."""
