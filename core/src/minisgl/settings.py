"""One settings object for every process.

Filled in this order, later wins: defaults < TOML file (`--config`) < environment
variables (seed 000's names) < command-line flags (seed 003's names and aliases).
Every effective value remembers where it came from (`minisgl serve --print-config`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
import tomllib

MAX_NEW_TOKENS_DEFAULT = 512  # seed 000: "a code constant in config.py"
DEFAULT_MODEL = "rd211/Qwen3-0.6B-Instruct"  # seed 000's MODEL_NAME default

Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Ratio = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # model and weights
    model_path: str = DEFAULT_MODEL
    model_local_dir: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    dummy_weight: bool = False
    # backend and device
    backend: str = "auto"  # auto|hf|torch|sgl|mlx or any registered backend
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # parallelism
    tp_size: Positive = 1
    dp_size: Positive = 1
    disable_pynccl: bool = False
    enable_multi_device: bool = True
    # requests and scheduling
    max_running_requests: Positive = 256
    max_seq_len_override: Positive | None = None
    memory_ratio: Ratio = 0.9
    max_prefill_length: Positive = 8192
    page_size: Positive = 1
    num_pages: Positive | None = None
    cache_type: str = "radix"
    queue_policy: str = "fcfs"
    scheduler: str = "rr"
    attention_backend: Literal["auto", "fa", "fi", "triton", "sdpa", "torch"] = "auto"
    cuda_graph_max_bs: NonNegative | None = None
    moe_backend: Literal["auto", "fused"] = "auto"
    num_tokenizer: NonNegative = 0
    shell_mode: bool = False
    max_new_tokens_default: Positive = MAX_NEW_TOKENS_DEFAULT
    # server
    host: str = "127.0.0.1"
    port: Port = 1919
    served_model_name: str | None = None
    server_stream_log_stride: NonNegative = 0
    warm_prefixes: list[str] = []
    zmq_control: bool = False
    zmq_control_endpoint: str = "tcp://127.0.0.1:5557"
    # engine pool and backpressure
    max_inflight_total: NonNegative = 0
    max_inflight_per_engine: NonNegative = 0
    adaptive_max_new_tokens: bool = False
    adaptive_max_inflight_threshold: NonNegative = 0
    adaptive_max_new_tokens_factor: Ratio = 0.8
    async_prefill_queue: bool = False
    metric_window: Positive = 128
    # streaming and logs
    fast_stream_decode: bool = False
    decode_log_stride: NonNegative = 256
    # caches (seed 000's knobs, mapped onto the radix cache)
    token_cache_size: NonNegative = 32
    prefill_cache_size: NonNegative = 4
    prefill_cache_token_budget: NonNegative = 32768
    prefix_cache: bool = True
    prefix_cache_size: NonNegative = 8
    prefix_cache_max_tokens: NonNegative = 2048
    prefix_cache_token_budget: NonNegative = 32768
    # MLX
    mlx_cache_dir: str = "~/.cache/mini_sglang/mlx"
    mlx_trust_remote_code: bool = False
    mlx_prefill_step_size: Positive = 2048
    mlx_max_kv_size: NonNegative = 0
    aggressive_max_new_tokens: bool = False
    # vision-language
    vlm_backend: Literal["auto", "hf", "mlx"] = "auto"
    vlm_model_name: str | None = None
    vlm_image_token: str = "<image>"
    vlm_image_http_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    vlm_max_image_bytes: Positive = 10485760
    allow_file_image_url: bool = False
    vlm_stream_log_stride: NonNegative = 32
    # image and video generation
    image_model_id: str | None = None
    video_model_id: str | None = None
    z_image_model_id: str = "Tongyi-MAI/Z-Image-Turbo"
    z_image_model_dir: str | None = None
    z_image_cache_dir: str = "~/.cache/mini-sglang"
    # runtime
    matmul_precision: Literal["highest", "high", "medium"] | None = None
    enable_sdp: bool = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


@dataclass(frozen=True)
class Option:
    """How a setting is reached from the outside."""

    env: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    help: str = ""


def _o(env: str | tuple[str, ...] = (), flags: str | tuple[str, ...] = (), help: str = "") -> Option:
    env_t = (env,) if isinstance(env, str) else env
    flags_t = (flags,) if isinstance(flags, str) else flags
    return Option(env_t, flags_t, help)


OPTIONS: dict[str, Option] = {
    "model_path": _o("MODEL_NAME", ("--model-path", "--model"), "model: local dir, built-in name (see `minisgl models list`) or hub id"),
    "model_local_dir": _o("MODEL_LOCAL_DIR", (), "local path that overrides --model-path"),
    "trust_remote_code": _o("TRUST_REMOTE_CODE", "--trust-remote-code", "pass trust_remote_code=True to transformers"),
    "dtype": _o("DTYPE", "--dtype", "weights and activations dtype"),
    "dummy_weight": _o("DUMMY_WEIGHT", "--dummy-weight", "random weights instead of loading a checkpoint"),
    "backend": _o("BACKEND_IMPL", "--backend", "model runner backend: auto|hf|torch|sgl|mlx (torch = hf)"),
    "device": _o("DEVICE", "--device", "device for the model runner"),
    "tp_size": _o("TP_SIZE", ("--tensor-parallel-size", "--tp-size"), "tensor-parallel degree (GPUs per replica)"),
    "dp_size": _o("DP_SIZE", ("--data-parallel-size", "--dp-size"), "engine replicas behind one server"),
    "disable_pynccl": _o("DISABLE_PYNCCL", "--disable-pynccl", "use torch.distributed instead of PyNCCL for TP"),
    "enable_multi_device": _o("ENABLE_MULTI_DEVICE", "--enable-multi-device", "one replica per GPU when several exist"),
    "max_running_requests": _o("MAX_RUNNING_REQUESTS", "--max-running-requests", "max requests decoding at once"),
    "max_seq_len_override": _o("MAX_SEQ_LEN_OVERRIDE", "--max-seq-len-override", "override the model's context length"),
    "memory_ratio": _o("MEMORY_RATIO", "--memory-ratio", "fraction of device memory for weights + KV pool"),
    "max_prefill_length": _o("MAX_PREFILL_LENGTH", ("--max-prefill-length", "--max-extend-length"), "chunked-prefill token budget per step"),
    "page_size": _o("PAGE_SIZE", "--page-size", "tokens per KV page"),
    "num_pages": _o("NUM_PAGES", ("--num-pages", "--num-tokens"), "KV pool size in pages (overrides --memory-ratio)"),
    "cache_type": _o("CACHE_TYPE", "--cache-type", "prefix cache plugin: radix|naive|..."),
    "queue_policy": _o("QUEUE_POLICY", "--queue-policy", "waiting-queue order plugin: fcfs|lpm|priority|..."),
    "scheduler": _o("SCHEDULER_MODE", ("--scheduler", "--scheduler-mode"), "replica dispatch policy: rr|fsfs|random|cache_aware|..."),
    "attention_backend": _o("ATTENTION_BACKEND", ("--attention-backend", "--attn"), "attention kernels"),
    "cuda_graph_max_bs": _o("CUDA_GRAPH_MAX_BS", ("--cuda-graph-max-bs", "--graph"), "largest decode batch captured in a CUDA graph (0 disables)"),
    "moe_backend": _o("MOE_BACKEND", "--moe-backend", "MoE kernels"),
    "num_tokenizer": _o("NUM_TOKENIZER", ("--num-tokenizer", "--tokenizer-count"), "tokenizer processes (0 = in the server)"),
    "shell_mode": _o("SHELL_MODE", "--shell-mode", "interactive shell: one request at a time"),
    "max_new_tokens_default": _o("MAX_NEW_TOKENS_DEFAULT", "--max-new-tokens-default", "max_new_tokens when a request sets none"),
    "host": _o("HOST", "--host", "HTTP listen address"),
    "port": _o("PORT", "--port", "HTTP listen port"),
    "served_model_name": _o("SERVED_MODEL_NAME", "--served-model-name", "model id reported by /v1/models"),
    "server_stream_log_stride": _o("SERVER_STREAM_LOG_STRIDE", "--server-stream-log-stride", "log every N streamed chunks (0 = off)"),
    "warm_prefixes": _o("WARM_PREFIXES", "--warm-prefixes", "prompts separated by || that seed the prefix cache"),
    "zmq_control": _o("ZMQ_CONTROL", "--zmq-control", "serve the ZeroMQ control plane"),
    "zmq_control_endpoint": _o("ZMQ_CONTROL_ENDPOINT", "--zmq-control-endpoint", "control plane endpoint"),
    "max_inflight_total": _o("MAX_INFLIGHT_TOTAL", "--max-inflight-total", "global inflight cap (0 disables)"),
    "max_inflight_per_engine": _o("MAX_INFLIGHT_PER_ENGINE", "--max-inflight-per-engine", "per-replica inflight cap (0 disables)"),
    "adaptive_max_new_tokens": _o("ADAPTIVE_MAX_NEW_TOKENS", "--adaptive-max-new-tokens", "scale max_new_tokens down under load"),
    "adaptive_max_inflight_threshold": _o("ADAPTIVE_MAX_INFLIGHT_THRESHOLD", "--adaptive-max-inflight-threshold", "inflight count that triggers the downscale"),
    "adaptive_max_new_tokens_factor": _o("ADAPTIVE_MAX_NEW_TOKENS_FACTOR", "--adaptive-max-new-tokens-factor", "downscale factor"),
    "async_prefill_queue": _o("ASYNC_PREFILL_QUEUE", "--async-prefill-queue", "warm prefixes in the background"),
    "metric_window": _o("METRIC_WINDOW", "--metric-window", "requests in the rolling latency/throughput window"),
    "fast_stream_decode": _o("FAST_STREAM_DECODE", "--fast-stream-decode", "stream per-token deltas, decode full text at the end"),
    "decode_log_stride": _o("DECODE_LOG_STRIDE", "--decode-log-stride", "log every N decode steps"),
    "token_cache_size": _o("TOKEN_CACHE_SIZE", (), "tokenizer decode cache size"),
    "prefill_cache_size": _o("PREFILL_CACHE_SIZE", (), "exact-match prompt entries kept by the prefix cache"),
    "prefill_cache_token_budget": _o("PREFILL_CACHE_TOKEN_BUDGET", (), "token budget for exact-match prompt entries"),
    "prefix_cache": _o("PREFIX_CACHE", "--prefix-cache", "enable the prefix cache (off = --cache-type naive)"),
    "prefix_cache_size": _o("PREFIX_CACHE_SIZE", (), "cached prefixes (leaves) kept"),
    "prefix_cache_max_tokens": _o("PREFIX_CACHE_MAX_TOKENS", (), "longest prompt inserted into the prefix cache"),
    "prefix_cache_token_budget": _o("PREFIX_CACHE_TOKEN_BUDGET", (), "tokens the prefix cache may hold"),
    "mlx_cache_dir": _o("MLX_CACHE_DIR"),
    "mlx_trust_remote_code": _o("MLX_TRUST_REMOTE_CODE"),
    "mlx_prefill_step_size": _o("MLX_PREFILL_STEP_SIZE"),
    "mlx_max_kv_size": _o("MLX_MAX_KV_SIZE"),
    "aggressive_max_new_tokens": _o("AGGRESSIVE_MAX_NEW_TOKENS"),
    "vlm_backend": _o("VLM_BACKEND"),
    "vlm_model_name": _o("VLM_MODEL_NAME"),
    "vlm_image_token": _o("VLM_IMAGE_TOKEN"),
    "vlm_image_http_timeout_s": _o("VLM_IMAGE_HTTP_TIMEOUT_S"),
    "vlm_max_image_bytes": _o("VLM_MAX_IMAGE_BYTES"),
    "allow_file_image_url": _o("ALLOW_FILE_IMAGE_URL"),
    "vlm_stream_log_stride": _o("VLM_STREAM_LOG_STRIDE"),
    "image_model_id": _o("IMAGE_MODEL_ID", "--image-model"),
    "video_model_id": _o("VIDEO_MODEL_ID", "--video-model"),
    "z_image_model_id": _o("Z_IMAGE_MODEL_ID"),
    "z_image_model_dir": _o("Z_IMAGE_MODEL_DIR"),
    "z_image_cache_dir": _o("Z_IMAGE_CACHE_DIR"),
    "matmul_precision": _o("MATMUL_PRECISION"),
    "enable_sdp": _o("ENABLE_SDP"),
    "log_level": _o(("MINISGL_LOG_LEVEL", "LOG_LEVEL"), "--log-level", "logging level"),
}

FIELD_NAMES = tuple(Settings.__struct_fields__)
assert set(OPTIONS) == set(FIELD_NAMES), set(OPTIONS) ^ set(FIELD_NAMES)


class SettingsError(ValueError):
    """An invalid setting: names the setting, the value and where it came from."""

    def __init__(self, name: str, value: Any, source: str, reason: str) -> None:
        self.name, self.value, self.source, self.reason = name, value, source, reason
        super().__init__(f"invalid value {value!r} for setting '{name}' (from {source}): {reason}")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _from_string(name: str, raw: str) -> Any:
    """Environment values are strings; turn them into what the field expects."""
    field_type = Settings.__annotations__[name]
    if "list[str]" in str(field_type):
        return [p.strip() for p in raw.split("||") if p.strip()]
    if "bool" in str(field_type) and "str" not in str(field_type):
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        return raw
    if raw.strip().lower() in ("", "none", "null") and "None" in str(field_type):
        return None
    return raw


def _flag_name(name: str) -> str:
    flags = OPTIONS[name].flags
    return flags[0] if flags else name


def _check(name: str, value: Any, source: str) -> Any:
    """Validate one value against its field's type and constraints."""
    probe = {name: value}
    try:
        return getattr(msgspec.convert(probe, Settings, strict=False), name)
    except msgspec.ValidationError as exc:
        reason = str(exc).split(" - at ")[0]
        raise SettingsError(name, value, source, reason) from None


class SettingsLoader:
    """Builds a Settings and records each value's source."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {name: "default" for name in FIELD_NAMES}

    def apply(self, values: dict[str, Any], source: str) -> None:
        for name, value in values.items():
            if name not in OPTIONS:
                raise SettingsError(name, value, source, "unknown setting; see `minisgl serve --help`")
            self.values[name] = _check(name, value, source)
            self.sources[name] = source

    def apply_toml(self, path: str) -> None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise SettingsError("config", path, "--config", "file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError("config", path, "--config", f"not valid TOML: {exc}") from None
        # Accept a flat table, or the [server] table of a `minisgl launch` file.
        table = data.get("server", data) if isinstance(data.get("server"), dict) else data
        flat = {k.replace("-", "_"): v for k, v in table.items() if not isinstance(v, dict)}
        self.apply(flat, f"config file {path}")

    def apply_env(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        for name, opt in OPTIONS.items():
            for var in opt.env:
                if var in env:
                    self.apply({name: _from_string(name, env[var])}, f"env {var}")
                    break

    def apply_flags(self, flags: dict[str, Any]) -> None:
        for name, value in flags.items():
            if value is None:
                continue
            if isinstance(value, str) and name in OPTIONS:
                value = _from_string(name, value)
            self.apply({name: value}, f"flag {_flag_name(name)}")

    def build(self) -> Settings:
        settings = Settings(**self.values)
        _finalize(settings, self.sources)
        return settings


def _finalize(s: Settings, sources: dict[str, str]) -> None:
    """Cross-field rules (seed 003's shell mode; PREFIX_CACHE=0 means no prefix cache)."""
    if s.model_local_dir:
        s.model_path = s.model_local_dir
        sources["model_path"] = sources["model_local_dir"]
    if s.shell_mode:
        s.max_running_requests = 1
        s.cuda_graph_max_bs = 1
        sources["max_running_requests"] = sources["cuda_graph_max_bs"] = "--shell-mode"
    if not s.prefix_cache and s.cache_type == "radix":
        s.cache_type = "naive"
        sources["cache_type"] = sources["prefix_cache"]
    if s.backend == "torch":
        s.backend = "hf"  # seed 000: torch is the HF/torch backend


def load_settings(
    flags: dict[str, Any] | None = None,
    config: str | None = None,
    environ: dict[str, str] | None = None,
) -> tuple[Settings, dict[str, str]]:
    loader = SettingsLoader()
    if config:
        loader.apply_toml(config)
    loader.apply_env(environ)
    loader.apply_flags(flags or {})
    return loader.build(), loader.sources


def format_config(settings: Settings, sources: dict[str, str]) -> str:
    width = max(len(n) for n in FIELD_NAMES)
    lines = []
    for name in FIELD_NAMES:
        value = getattr(settings, name)
        lines.append(f"{name:<{width}}  {value!r:<40}  {sources.get(name, 'default')}")
    return "\n".join(lines)


def settings_from_kwargs(**kwargs: Any) -> Settings:
    """For the offline API: `LLM(model=..., max_running_requests=...)`; env still applies."""
    if "model" in kwargs:
        kwargs["model_path"] = kwargs.pop("model")
    settings, _ = load_settings(flags=kwargs)
    return settings


if __name__ == "__main__":  # pragma: no cover
    s, src = load_settings()
    sys.stdout.write(format_config(s, src) + "\n")
