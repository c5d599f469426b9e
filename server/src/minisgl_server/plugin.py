"""minisgl-server's plugin: the `minisgl serve` subcommand and the settings only the server
reads (HTTP, control plane, engine pool and backpressure, shutdown and supervision)."""

from typing import Annotated, Literal

import msgspec

from minisgl.hookspecs import hookimpl
from minisgl.sampling_params import Pooling
from minisgl.settings import NonNegative, Positive, Ratio
from minisgl.specs import CommandSpec, SettingSpec

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
HeaderTimeout = Annotated[float, msgspec.Meta(gt=0.0, le=3600.0)]  # 0 would close every connection
Seconds = Annotated[float, msgspec.Meta(ge=0.0, le=86400.0)]

# name, type, default, help; the env var is NAME and the flag --name, unless FLAGS says otherwise
SETTINGS = [
    ("dp_size", Positive, 1, "engine replicas behind one server"),
    ("enable_multi_device", bool, True, "one replica per GPU when several exist"),
    ("distributed_executor", Literal["mp", "ray"], "mp",
     "where engine replicas run: mp (local processes) or ray (Ray actors on the cluster RAY_ADDRESS names, "
     "else on a local one; pip install 'minisgl-server[ray]')"),
    ("host", str, "127.0.0.1", "HTTP listen address"),
    ("port", Port, 1919, "HTTP listen port"),
    ("http_header_timeout", HeaderTimeout, 5.0, "seconds a connection has to send a request's headers (then it is closed)"),
    ("http_body_timeout", HeaderTimeout, 60.0,
     "seconds a request's body has to arrive in full once its headers are in (then 408 and the connection is closed)"),
    ("request_timeout", Seconds, 0.0,
     "seconds a generation request may run from its admission before it is ended with 408 request_timeout "
     "and its engine work aborted (0 = no deadline)"),
    ("served_model_name", str | None, None, "model id reported by /v1/models"),
    ("server_stream_log_stride", NonNegative, 0, "log every N streamed chunks (0 = off)"),
    ("warm_prefixes", list[str], [], "prompts separated by || that seed the prefix cache"),
    ("zmq_control", bool, False, "serve the ZeroMQ control plane"),
    ("zmq_control_endpoint", str, "tcp://127.0.0.1:5557", "control plane endpoint"),
    ("max_inflight_total", NonNegative, 0, "global inflight cap (0 disables)"),
    ("max_inflight_per_engine", NonNegative, 0, "per-replica inflight cap (0 disables)"),
    ("adaptive_max_new_tokens", bool, False, "scale max_new_tokens down under load"),
    ("adaptive_max_inflight_threshold", NonNegative, 0, "inflight count that triggers the downscale"),
    ("adaptive_max_new_tokens_factor", Ratio, 0.8, "downscale factor"),
    ("async_prefill_queue", bool, False, "warm prefixes in the background"),
    ("metric_window", Positive, 128, "requests in the rolling latency/throughput window"),
    ("max_body_bytes", Positive, 64 * 1024 * 1024, "largest request body accepted (larger ones are answered 413)"),
    ("drain_timeout_s", Seconds, 30.0,
     "on SIGTERM/SIGINT, seconds in-flight requests get to finish before they are ended with an error"),
    ("engine_restart_limit", NonNegative, 3,
     "restarts of a dead engine replica in a row before it stays down (0 = never restart)"),
    ("engine_restart_backoff_s", Seconds, 1.0,
     "wait before the first restart of a dead engine; doubles with each failure in a row (at most 60 s)"),
    ("watchdog_timeout", Seconds, 300.0,
     "seconds an engine with requests waiting may go without finishing a step before it is declared stuck, "
     "killed and restarted (0 = no watchdog); long enough for the first CUDA-graph capture and the slowest "
     "CPU step"),
    ("api_key", list[str], [],
     "API keys (separated by ||): every route but /health, /metrics and /schema then needs "
     "`Authorization: Bearer <key>`, and stored responses belong to the key that made them"),
    ("responses_store", str | None, None,
     "the SQLite file of stored responses (POST /v1/responses with store: true); unset: "
     "responses.sqlite3 in the cache directory (MINISGL_CACHE_DIR); :memory: keeps them in memory only"),
    ("responses_store_max", Positive, 10000, "stored responses kept; beyond it the oldest go first"),
    ("embedding_pooling", Pooling, "last",
     "how /v1/embeddings pools a prompt's final hidden states: last (the last token's, as decoder-only "
     "embedding models are trained) or mean (their average over every token)"),
    ("embedding_normalize", bool, True, "L2-normalise /v1/embeddings vectors (as sentence-transformers and vLLM do)"),
]
FLAGS = {"dp_size": ("--data-parallel-size", "--dp-size"), "drain_timeout_s": ("--drain-timeout",),
         "distributed_executor": ("--distributed-executor", "--distributed-executor-backend")}


@hookimpl
def minisgl_register_settings(register):
    for name, type_, default, help_ in SETTINGS:
        flags = FLAGS.get(name, ("--" + name.replace("_", "-"),))
        register(SettingSpec(name=name, type=type_, default=default, env=(name.upper(),), flags=flags, help=help_))


@hookimpl
def minisgl_register_commands(register):
    register(CommandSpec(
        name="serve",
        description="start the HTTP server and its engine processes",
        factory="minisgl_server.cli:serve",
    ))
