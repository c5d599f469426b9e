"""One settings object for every process.

The core declares its own settings (the fields of `Settings`, reached as `CORE_OPTIONS`
says); each plugin declares its own as `SettingSpec`s through `minisgl_register_settings`,
stored in `Settings.plugin_values` and read as attributes (`settings.mlx_prefill_step_size`).
Both are filled the same way, later wins: defaults < TOML file (`--config`) < environment
variables < command-line flags, both under the original mini-sglang's names and aliases
(README, Settings). Every effective value remembers where it came from
(`minisgl serve --print-config`).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
import msgspec.inspect as mi
import tomllib

from .specs import SettingSpec

if TYPE_CHECKING:
    from .plugins import Registry


MAX_NEW_TOKENS_DEFAULT = 512  # the original mini-sglang's default (README, Settings)
DEFAULT_MODEL = "rd211/Qwen3-0.6B-Instruct"  # the original mini-sglang's MODEL_NAME default

Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Ratio = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]


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
    cpu_threads: NonNegative = 0
    cpu_set: str | None = None
    # requests and scheduling
    max_running_requests: Positive = 256
    max_seq_len_override: Positive | None = None
    memory_ratio: Ratio = 0.9
    max_prefill_length: Positive | None = None  # None: the device's default (engine/scheduler.py)
    page_size: Positive = 1
    num_pages: Positive | None = None
    cache_type: str = "radix"
    queue_policy: str = "fcfs"
    scheduler: str = "rr"
    num_tokenizer: NonNegative = 0
    shell_mode: bool = False
    max_new_tokens_default: Positive = MAX_NEW_TOKENS_DEFAULT
    max_request_logprobs: Positive = 1_000_000
    # streaming and logs
    fast_stream_decode: bool = True
    decode_log_stride: NonNegative = 256
    # caches (the original mini-sglang's knobs, mapped onto the radix cache)
    token_cache_size: NonNegative = 32
    prefill_cache_size: NonNegative = 4
    prefill_cache_token_budget: NonNegative = 32768
    prefix_cache: bool = True
    # None: bounded by the KV pool (LRU eviction under pool pressure); see cache/radix.py
    prefix_cache_size: NonNegative | None = None
    prefix_cache_max_tokens: NonNegative | None = None
    prefix_cache_token_budget: NonNegative | None = None
    # hierarchical cache: host-memory and disk tiers under the prefix cache (sglang's names; cache/tiers.py)
    enable_hierarchical_cache: bool = False
    hicache_size: Annotated[float, msgspec.Meta(gt=0)] = 4.0  # GB of host memory
    hicache_ratio: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    hicache_write_policy: Literal["write_back", "write_through"] = "write_through"
    hicache_storage_backend: Literal["file"] | None = None
    hicache_storage_dir: str | None = None
    hicache_storage_size: Annotated[float, msgspec.Meta(gt=0)] = 16.0  # GB of disk
    # vision-language chat: image_url parts (fetched and checked by the request layer)
    vlm_backend: Literal["auto", "hf", "mlx"] = "auto"
    vlm_model_name: str | None = None
    vlm_image_token: str = "<image>"
    vlm_image_http_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    vlm_max_image_bytes: Positive = 10485760
    vlm_max_request_pixels: Positive = 100_000_000
    allow_file_image_url: bool = False
    vlm_stream_log_stride: NonNegative = 32
    # chat answers
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    grammar_backend: str = "llguidance"
    # speculative decoding (sglang's names)
    speculative_algorithm: str | None = None
    speculative_num_draft_tokens: Positive = 8
    speculative_draft_model_path: str | None = None
    speculative_ngram_min_match_window_size: Positive = 1
    speculative_ngram_max_match_window_size: Positive = 12
    # runtime
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # the settings plugins declare, by name; read them as attributes (see __getattr__)
    plugin_values: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        # Only called when no field matches: a plugin's setting. A Settings built by hand
        # (tests, embedders) has no plugin values, so the declared default answers.
        if name.startswith("__") or name == "plugin_values":
            raise AttributeError(name)
        if name in self.plugin_values:
            return self.plugin_values[name]
        from .plugins import get_registry

        spec = get_registry().specs["setting"].get(name)
        if spec is None:
            raise AttributeError(
                f"no setting {name!r}: neither the core nor an installed plugin declares it (see `minisgl plugins`)"
            )
        return spec.default

    def values(self) -> dict[str, Any]:
        """Every setting by name: the core's fields, then the plugins' values."""
        core = {name: getattr(self, name) for name in self.__struct_fields__ if name != "plugin_values"}
        return core | self.plugin_values


def _o(env: str | tuple[str, ...] = (), flags: str | tuple[str, ...] = (), help: str = "",
       unsupported: str | None = None) -> dict[str, Any]:
    env_t = (env,) if isinstance(env, str) else env
    flags_t = (flags,) if isinstance(flags, str) else flags
    return {"env": env_t, "flags": flags_t, "help": help, "unsupported": unsupported}


# How each core setting is reached from the outside (its type and default are the field's).
CORE_OPTIONS: dict[str, dict[str, Any]] = {
    "model_path": _o("MODEL_NAME", ("--model-path", "--model"), "model: local dir, built-in name (see `minisgl models list`) or hub id"),
    "model_local_dir": _o("MODEL_LOCAL_DIR", (), "local path that overrides --model-path"),
    "trust_remote_code": _o("TRUST_REMOTE_CODE", "--trust-remote-code", "pass trust_remote_code=True to transformers"),
    "dtype": _o("DTYPE", "--dtype", "weights and activations dtype"),
    "dummy_weight": _o("DUMMY_WEIGHT", "--dummy-weight", "random weights instead of loading a checkpoint"),
    "backend": _o("BACKEND_IMPL", "--backend", "model runner backend: auto|hf|torch|sgl|mlx (torch = hf)"),
    "device": _o("DEVICE", "--device", "device for the model runner"),
    "tp_size": _o("TP_SIZE", ("--tensor-parallel-size", "--tp-size"), "tensor-parallel degree (GPUs per replica)"),
    "cpu_threads": _o("CPU_THREADS", "--cpu-threads", "threads of each engine on a CPU, kept fixed (0 = planned for "
                      "the whole server, fewer while other work runs on its cores)"),
    "cpu_set": _o("CPU_SET", "--cpu-set", "CPUs the engines may use, like 0-3,6 (default: all this process may use); "
                  "replicas split them"),
    "max_running_requests": _o("MAX_RUNNING_REQUESTS", "--max-running-requests", "max requests decoding at once"),
    "max_seq_len_override": _o("MAX_SEQ_LEN_OVERRIDE", ("--max-seq-len-override", "--max-model-len", "--context-length"),
                               "override the model's context length"),
    "memory_ratio": _o("MEMORY_RATIO", "--memory-ratio", "fraction of device memory for weights + KV pool"),
    "max_prefill_length": _o("MAX_PREFILL_LENGTH", ("--max-prefill-length", "--max-extend-length"), "chunked-prefill token budget per step "
                             "(unset: 8192, or 512 on a CPU)"),
    "page_size": _o("PAGE_SIZE", "--page-size", "tokens per KV page"),
    "num_pages": _o("NUM_PAGES", ("--num-pages", "--num-tokens"), "KV pool size in pages (overrides --memory-ratio)"),
    "cache_type": _o("CACHE_TYPE", "--cache-type", "prefix cache plugin: radix|naive|..."),
    "queue_policy": _o("QUEUE_POLICY", "--queue-policy", "waiting-queue order plugin: fcfs|lpm|priority|..."),
    "scheduler": _o("SCHEDULER_MODE", ("--scheduler", "--scheduler-mode"), "replica dispatch policy: rr|fsfs|random|cache_aware|..."),
    "num_tokenizer": _o("NUM_TOKENIZER", ("--num-tokenizer", "--tokenizer-count"), "tokenizer worker processes in front of the engines (0 = a thread of the server process)"),
    "shell_mode": _o("SHELL_MODE", "--shell-mode", "interactive shell: one request at a time"),
    "max_new_tokens_default": _o("MAX_NEW_TOKENS_DEFAULT", "--max-new-tokens-default", "max_new_tokens when a request sets none"),
    "max_request_logprobs": _o("MAX_REQUEST_LOGPROBS", "--max-request-logprobs",
                               "logprob entries one request may ask for: n x max_tokens x (1 + top_logprobs), "
                               "over all its prompts (more is a 400)"),
    "fast_stream_decode": _o("FAST_STREAM_DECODE", "--fast-stream-decode", "stream per-token deltas whose text "
                             "equals a full decode (always so)",
                             unsupported="the incremental detokenizer always streams per-token deltas, and their "
                             "text equals a full decode"),
    "decode_log_stride": _o("DECODE_LOG_STRIDE", "--decode-log-stride", "log every N decode steps"),
    "token_cache_size": _o("TOKEN_CACHE_SIZE", (), "tokenizer decode cache size: single tokens' text kept for logprobs (0 = unbounded)"),
    "prefill_cache_size": _o("PREFILL_CACHE_SIZE", (), "exact-match prompt entries kept by the prefix cache"),
    "prefill_cache_token_budget": _o("PREFILL_CACHE_TOKEN_BUDGET", (), "token budget for exact-match prompt entries"),
    "prefix_cache": _o("PREFIX_CACHE", "--prefix-cache", "enable the prefix cache (off = --cache-type naive)"),
    "prefix_cache_size": _o("PREFIX_CACHE_SIZE", (), "cached prefixes (leaves) kept (unset: the KV pool decides)"),
    "prefix_cache_max_tokens": _o("PREFIX_CACHE_MAX_TOKENS", (), "longest prompt inserted into the prefix cache "
                                  "(unset: any)"),
    "prefix_cache_token_budget": _o("PREFIX_CACHE_TOKEN_BUDGET", (), "tokens the prefix cache may hold "
                                    "(unset: the KV pool decides)"),
    "enable_hierarchical_cache": _o("ENABLE_HIERARCHICAL_CACHE", "--enable-hierarchical-cache",
                                    "keep KV pages the device pool lets go in host memory (and on disk with "
                                    "--hicache-storage-backend file), and load them back for matching prefixes"),
    "hicache_size": _o("HICACHE_SIZE", "--hicache-size", "GB of host memory for the hierarchical cache's host tier"),
    "hicache_ratio": _o("HICACHE_RATIO", "--hicache-ratio", "host tier size as a multiple of the device pool",
                        unsupported="size the host tier in GB with --hicache-size"),
    "hicache_write_policy": _o("HICACHE_WRITE_POLICY", "--hicache-write-policy", "when pages reach the tiers: "
                               "write_through (as a finished request caches them) or write_back (when evicted)"),
    "hicache_storage_backend": _o("HICACHE_STORAGE_BACKEND", "--hicache-storage-backend",
                                  "a tier that outlives the process: file (default: none)"),
    "hicache_storage_dir": _o("HICACHE_STORAGE_DIR", "--hicache-storage-dir", "directory of the file storage "
                              "tier (servers of any model may share it)"),
    "hicache_storage_size": _o("HICACHE_STORAGE_SIZE", "--hicache-storage-size",
                               "GB the file storage tier may take (least recently used pages go first)"),
    "vlm_backend": _o("VLM_BACKEND", "--vlm-backend", "backend for a vision-language model under --backend auto: "
                      "auto (mlx on Apple silicon when mlx-vlm is installed, else hf)|hf|mlx"),
    "vlm_model_name": _o("VLM_MODEL_NAME", "--vlm-model-name", "vision-language model served beside MODEL_NAME "
                         "for requests with images (default: MODEL_NAME itself)"),
    "vlm_image_token": _o("VLM_IMAGE_TOKEN", "--vlm-image-token", "text that marks each image in the prompt when "
                          "the chat template writes no image token of its own"),
    "vlm_image_http_timeout_s": _o("VLM_IMAGE_HTTP_TIMEOUT_S", "--vlm-image-http-timeout-s",
                                   "seconds an http(s) image download may take in all"),
    "vlm_max_image_bytes": _o("VLM_MAX_IMAGE_BYTES", "--vlm-max-image-bytes", "largest encoded image accepted, in bytes"),
    "vlm_max_request_pixels": _o("VLM_MAX_REQUEST_PIXELS", "--vlm-max-request-pixels",
                                 "pixels of all one request's images together (more is a 400)"),
    "allow_file_image_url": _o("ALLOW_FILE_IMAGE_URL", "--allow-file-image-url", "accept file:// URLs and local "
                               "paths as images (lets every caller read this server's files: trusted use only)"),
    "vlm_stream_log_stride": _o("VLM_STREAM_LOG_STRIDE", "--vlm-stream-log-stride",
                                "log every N streamed chunks of a request with images (0 = off)"),
    "reasoning_parser": _o("REASONING_PARSER", "--reasoning-parser", "move a chat answer's <think> reasoning into "
                           "reasoning_content: qwen3|deepseek-r1|... (see `minisgl plugins`; default: off)"),
    "tool_call_parser": _o("TOOL_CALL_PARSER", "--tool-call-parser", "parse a chat answer's tool calls into "
                           "tool_calls (tool_choice auto): hermes|qwen|llama3|... (see `minisgl plugins`; default: off, "
                           "and tool_choice required or a named function use hermes' format)"),
    "speculative_algorithm": _o("SPECULATIVE_ALGORITHM", "--speculative-algorithm", "draft tokens and verify them "
                                "in one forward: ngram|... (see `minisgl plugins`; default: off)"),
    "speculative_num_draft_tokens": _o("SPECULATIVE_NUM_DRAFT_TOKENS", "--speculative-num-draft-tokens",
                                       "tokens drafted per request and step"),
    "speculative_draft_model_path": _o("SPECULATIVE_DRAFT_MODEL_PATH", "--speculative-draft-model-path",
                                       "draft model of the standalone proposer (same tokenizer as the model)"),
    "speculative_ngram_min_match_window_size": _o("SPECULATIVE_NGRAM_MIN_MATCH_WINDOW_SIZE",
                                                  "--speculative-ngram-min-match-window-size",
                                                  "shortest suffix the ngram proposer matches"),
    "speculative_ngram_max_match_window_size": _o("SPECULATIVE_NGRAM_MAX_MATCH_WINDOW_SIZE",
                                                  "--speculative-ngram-max-match-window-size",
                                                  "longest suffix the ngram proposer matches"),
    "grammar_backend": _o("GRAMMAR_BACKEND", "--grammar-backend", "the library behind json_schema, regex, ebnf, "
                          "response_format and forced tool calls: llguidance|... (see `minisgl plugins`)"),
    "log_level": _o(("MINISGL_LOG_LEVEL", "LOG_LEVEL"), "--log-level", "logging level"),
}

CORE_SETTINGS: tuple[SettingSpec, ...] = tuple(
    SettingSpec(name=f.name, type=f.type, default=f.default_factory() if f.default is msgspec.NODEFAULT else f.default,
                **CORE_OPTIONS[f.name])
    for f in msgspec.structs.fields(Settings)
    if f.name != "plugin_values"
)
CORE_NAMES = frozenset(CORE_OPTIONS)
assert CORE_NAMES == {s.name for s in CORE_SETTINGS}, CORE_NAMES ^ {s.name for s in CORE_SETTINGS}


class SettingsError(ValueError):
    """An invalid setting: names the setting, the value and where it came from."""

    def __init__(self, name: str, value: Any, source: str, reason: str) -> None:
        self.name, self.value, self.source, self.reason = name, value, source, reason
        super().__init__(f"invalid value {value!r} for setting '{name}' (from {source}): {reason}")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _from_string(spec: SettingSpec, raw: str) -> Any:
    """Environment values (and string flags) are strings; shape them for the declared type."""
    info = mi.type_info(spec.type)
    kinds = {type(m) for m in (info.types if isinstance(info, mi.UnionType) else (info,))}
    low = raw.strip().lower()
    if mi.ListType in kinds:
        return [p.strip() for p in raw.split("||") if p.strip()]
    if mi.BoolType in kinds and mi.StrType not in kinds:
        return True if low in _TRUE else False if low in _FALSE else raw
    if low in ("", "none", "null") and mi.NoneType in kinds:
        return None
    if (values := choices(spec)) is not None:  # LOG_LEVEL=debug as well as DEBUG
        return next((v for v in values if isinstance(v, str) and v.lower() == low), raw)
    return raw


def choices(spec: SettingSpec) -> tuple[Any, ...] | None:
    """The values a setting declared as a `Literal` takes (None: not a closed set)."""
    info = mi.type_info(spec.type)
    literals = [t for t in (info.types if isinstance(info, mi.UnionType) else (info,)) if isinstance(t, mi.LiteralType)]
    return tuple(v for t in literals for v in t.values) if literals else None


def _check(spec: SettingSpec, value: Any, source: str) -> Any:
    """Validate one value against its declared type, constraints and support."""
    try:
        converted = msgspec.convert(value, spec.type, strict=False)
    except msgspec.ValidationError as exc:
        reason = str(exc).split(" - at ")[0]
        if (values := choices(spec)) is not None:
            reason += f"; the values that work: {', '.join(map(str, values))}"
        raise SettingsError(spec.name, value, source, reason) from None
    if spec.unsupported and converted != spec.default:
        raise SettingsError(spec.name, value, source, f"not supported: {spec.unsupported}")
    return converted


class SettingsLoader:
    """Builds a Settings from the declared settings (the core's and the registry's) and
    records each value's source."""

    def __init__(self, registry: Registry) -> None:
        self.declared: dict[str, SettingSpec] = {s.name: s for s in registry.settings()}
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {name: "default" for name in self.declared}

    def apply(self, values: dict[str, Any], source: str) -> None:
        for name, value in values.items():
            spec = self.declared.get(name)
            if spec is None:
                raise SettingsError(name, value, source, "unknown setting: neither the core nor an installed plugin "
                                    "declares it; see `minisgl serve --help` and `minisgl plugins`")
            self.values[name] = _check(spec, value, source)
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
        for spec in self.declared.values():
            var = next((v for v in spec.env if v in env), None)
            if var is not None:
                self.apply({spec.name: _from_string(spec, env[var])}, f"env {var}")

    def apply_flags(self, flags: dict[str, Any]) -> None:
        for name, value in flags.items():
            if value is None:
                continue
            spec = self.declared.get(name)
            if isinstance(value, str) and spec is not None:
                value = _from_string(spec, value)
            self.apply({name: value}, f"flag {spec.flags[0] if spec and spec.flags else name}")

    def build(self) -> Settings:
        core = {name: value for name, value in self.values.items() if name in CORE_NAMES}
        plugin_values = {
            name: self.values.get(name, spec.default) for name, spec in self.declared.items() if name not in CORE_NAMES
        }
        settings = Settings(**core, plugin_values=plugin_values)
        _finalize(settings, self.sources)
        return settings


def _finalize(s: Settings, sources: dict[str, str]) -> None:
    """Cross-field rules (--shell-mode; PREFIX_CACHE=0 means no prefix cache; no model
    named and the default unavailable offline means the embedded one)."""
    if s.model_local_dir:
        s.model_path = s.model_local_dir
        sources["model_path"] = sources["model_local_dir"]
    elif sources.get("model_path", "default") == "default":
        from .models import default_model

        s.model_path, unavailable = default_model(s.model_path)
        if unavailable:
            sources["model_path"] = f"default ({DEFAULT_MODEL} unavailable: {unavailable})"
    if s.shell_mode:
        # one request at a time (backend-sgl caps its CUDA graphs at this too)
        s.max_running_requests = 1
        sources["max_running_requests"] = "--shell-mode"
    if not s.prefix_cache and s.cache_type == "radix":
        s.cache_type = "naive"
        sources["cache_type"] = sources["prefix_cache"]
    if s.backend == "torch":
        s.backend = "hf"  # the original name of the HF/torch backend
    if s.hicache_storage_backend is not None and not s.enable_hierarchical_cache:
        raise SettingsError("hicache_storage_backend", s.hicache_storage_backend, sources["hicache_storage_backend"],
                            "needs --enable-hierarchical-cache")
    if s.hicache_storage_backend == "file" and not s.hicache_storage_dir:
        raise SettingsError("hicache_storage_backend", s.hicache_storage_backend, sources["hicache_storage_backend"],
                            "needs --hicache-storage-dir")
    if s.enable_hierarchical_cache and s.cache_type != "radix":
        raise SettingsError("enable_hierarchical_cache", True, sources["enable_hierarchical_cache"],
                            f"needs the radix prefix cache, not --cache-type {s.cache_type}")
    if s.speculative_ngram_min_match_window_size > s.speculative_ngram_max_match_window_size:
        raise SettingsError("speculative_ngram_min_match_window_size", s.speculative_ngram_min_match_window_size,
                            sources["speculative_ngram_min_match_window_size"],
                            f"above --speculative-ngram-max-match-window-size "
                            f"({s.speculative_ngram_max_match_window_size})")
    if s.speculative_algorithm == "standalone" and not s.speculative_draft_model_path:
        raise SettingsError("speculative_draft_model_path", s.speculative_draft_model_path,
                            sources["speculative_draft_model_path"],
                            "--speculative-algorithm standalone drafts with this model: name one")
    if s.speculative_draft_model_path and s.speculative_algorithm != "standalone":
        raise SettingsError("speculative_draft_model_path", s.speculative_draft_model_path,
                            sources["speculative_draft_model_path"],
                            f"only --speculative-algorithm standalone runs a draft model "
                            f"(it is {s.speculative_algorithm or 'off'})")
    if s.cpu_set is not None:  # refused at start, not when an engine plans its threads
        from .cpu_threads import plan_threads, usable_cpus

        try:
            plan_threads(cpus=usable_cpus(), cpu_set=s.cpu_set)
        except ValueError as exc:
            raise SettingsError("cpu_set", s.cpu_set, sources["cpu_set"], str(exc)) from None


def _registry(registry: Registry | None) -> Registry:
    if registry is not None:
        return registry
    from .plugins import get_registry

    return get_registry()


def load_settings(
    flags: dict[str, Any] | None = None,
    config: str | None = None,
    environ: dict[str, str] | None = None,
    registry: Registry | None = None,
) -> tuple[Settings, dict[str, str]]:
    """The effective settings and each one's source. `registry` (default: this process's,
    `minisgl.plugins.get_registry()`) says which plugin settings exist."""
    loader = SettingsLoader(_registry(registry))
    if config:
        loader.apply_toml(config)
    loader.apply_env(environ)
    loader.apply_flags(flags or {})
    return loader.build(), loader.sources


def format_config(settings: Settings, sources: dict[str, str], registry: Registry | None = None) -> str:
    """One line per setting: name, effective value, owner (`core` or a plugin), source."""
    owners = _registry(registry).owner
    values = settings.values()
    width = max(len(n) for n in values)
    lines = [f"{'setting':<{width}}  {'value':<40}  {'owner':<12}  source"]
    for name, value in values.items():
        owner = owners.get(("setting", name), "?")
        lines.append(f"{name:<{width}}  {value!r:<40}  {owner:<12}  {sources.get(name, 'default')}")
    return "\n".join(lines)


def settings_from_kwargs(*, registry: Registry | None = None, **kwargs: Any) -> Settings:
    """For the offline API: `LLM(model=..., max_running_requests=..., mlx_prefill_step_size=...)`;
    env still applies."""
    if "model" in kwargs:
        kwargs["model_path"] = kwargs.pop("model")
    settings, _ = load_settings(flags=kwargs, registry=registry)
    return settings


if __name__ == "__main__":  # pragma: no cover
    s, src = load_settings()
    sys.stdout.write(format_config(s, src) + "\n")
