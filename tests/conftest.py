"""Shared fixtures. Torch runs single-threaded: on this 2-core machine oversubscription costs 100x."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def tiny():
    """A fresh tiny random Llama (seed 0) and its byte tokenizer, in eval mode on CPU."""
    from hessian_lora.models import load_model

    return load_model("tiny-llama", device="cpu")


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct (converted once and cached); shared across the session, do not modify in place."""
    from hessian_lora.models import load_model

    return load_model("smollm2-135m", device="cpu")
