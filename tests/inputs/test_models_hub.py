"""Hub ids are hub ids whatever characters they hold: loaded offline from a hand-made Hugging Face cache."""

from __future__ import annotations

import hashlib

import pytest
import torch

from hessian_lora.inputs.models import load_model, looks_like_path, tiny_llama

HUB_ID = "acme/tiny-0.5B"


@pytest.mark.parametrize(
    "spec", ["Qwen/Qwen3-0.6B-Base", "acme/tiny-0.5B", "google/gemma-3-1b-pt", "meta-llama/Llama-2-7b.hf"]
)
def test_hub_ids_with_dots_and_dashes_are_not_paths(spec: str) -> None:
    assert not looks_like_path(spec)


@pytest.mark.parametrize("spec", ["./model", "../model", "/abs/model", "~/model", "models/x.gguf", "."])
def test_explicit_paths_are_paths(spec: str) -> None:
    assert looks_like_path(spec)


def test_existing_relative_directory_is_a_path(tmp_path, monkeypatch) -> None:
    (tmp_path / "acme" / "local-0.5B").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert looks_like_path("acme/local-0.5B")


def _offline_cache(tmp_path, monkeypatch):
    """A Hugging Face hub cache holding ``HUB_ID`` at one snapshot, with offline mode on."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hub"
    org, name = HUB_ID.split("/")
    repo = cache / f"models--{org}--{name}"
    commit = hashlib.sha1(b"acme tiny snapshot").hexdigest()
    snapshot = repo / "snapshots" / commit
    model, tokenizer = tiny_llama(seed=3, hidden_size=32, layers=1, intermediate_size=64)
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    # huggingface_hub reads these at import time; patch the environment (for subprocesses and late readers)
    # and the module constants (for everything already imported).
    for key, value in {
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return model


def test_hub_id_with_a_dot_loads_from_the_offline_cache(tmp_path, monkeypatch) -> None:
    saved = _offline_cache(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)  # no local directory named like the id
    loaded = load_model(HUB_ID, device="cpu")
    assert loaded.spec == HUB_ID
    expected = saved.state_dict()
    got = loaded.model.state_dict()
    assert set(expected) <= set(got)
    for key, tensor in expected.items():
        torch.testing.assert_close(got[key], tensor, rtol=0, atol=0, msg=key)
    text = "12 + 30 = 42"
    assert loaded.tokenizer.decode(loaded.tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_missing_hub_id_offline_is_a_one_line_user_error(tmp_path, monkeypatch) -> None:
    from hessian_lora.core.errors import UserError

    _offline_cache(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"hub model acme/other-1\.5B") as info:
        load_model("acme/other-1.5B", device="cpu")
    assert "\n" not in str(info.value)
