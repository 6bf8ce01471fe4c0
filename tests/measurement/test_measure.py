from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import hessian_lora
from hessian_lora.core.errors import UserError
from hessian_lora.hessian import EigenReport, HessianOperator, PerModule, lanczos
from hessian_lora.hessian.loss import loss_sum
from hessian_lora.inputs.models import load_model
from hessian_lora.inputs.tasks import load_task, make_batches
from hessian_lora.measurement.measure import MeasureSettings, read_report
from hessian_lora.training.adapters import AdapterConfig, build_adapter, make_optimizer
from hessian_lora.training.checkpoint import CheckpointMeta, save_checkpoint

SMALL = {
    "model": "tiny-llama",
    "rank": 2,
    "targets": ("q_proj", "v_proj"),
    "samples": 4,
    "batch_size": 2,
    "tol": 1e-6,
    "progress": False,
}


def test_eigen_at_initialisation_per_module_matches_a_direct_lanczos(tmp_path: Path) -> None:
    report = hessian_lora.eigen(
        method="lora", blocks="per-module", layers="0:1", out=tmp_path / "r.json", **SMALL
    )
    assert [b.name for b in report.blocks] == ["layers.0.self_attn.q_proj", "layers.0.self_attn.v_proj"]
    assert EigenReport.from_dict(json.loads((tmp_path / "r.json").read_text())) == report

    base = load_model("tiny-llama", device="cpu")
    model = build_adapter(base.model, AdapterConfig("lora", rank=2, targets=("q_proj", "v_proj")))
    batches = make_batches(base.tokenizer, load_task("arith", n_train=4, n_eval=0).train, 2)
    for block, found in zip(PerModule(layers=(0,)).blocks(model), report.blocks):
        direct = lanczos(HessianOperator(model, batches, block), which="both", tol=1e-6)
        assert found.lambda_max == pytest.approx(direct.lambda_max, rel=1e-6)
        assert found.lambda_min == pytest.approx(direct.lambda_min, rel=1e-6)
        # float32: tol 1e-6 is below the round-off floor (100 eps |λ|) that also certifies convergence
        assert found.converged and found.residual <= 100 * torch.finfo(torch.float32).eps * abs(
            found.lambda_max
        )
        assert found.tokens == sum(b.loss_tokens for b in batches) and found.batches == 2
        assert found.parameters == block.numel and found.hvps == found.eigen.hvps
        assert len(found.eigen.history) == found.eigen.iterations
    assert report.settings["backend"] == "double_backward" and report.source["at"] == "initialisation"
    assert (
        "dora_norm" not in report.settings
    )  # no DoRA: the settings of every report before dora_norm existed


def test_a_per_module_scan_resumes_and_refuses_other_settings(tmp_path: Path) -> None:
    out = tmp_path / "scan.json"
    first = hessian_lora.eigen(
        method="lora", blocks="per-module", modules="q_proj", layers="0", out=out, **SMALL
    )
    second = hessian_lora.eigen(
        method="lora", blocks="per-module", modules="q_proj", layers="0:2", out=out, **SMALL
    )
    assert [b.name for b in second.blocks] == ["layers.0.self_attn.q_proj", "layers.1.self_attn.q_proj"]
    assert second.blocks[0] == first.blocks[0]  # read back, not recomputed
    assert read_report(out) == second
    with pytest.raises(UserError, match=r"other settings.*tol"):
        hessian_lora.eigen(method="lora", blocks="per-module", out=out, **{**SMALL, "tol": 1e-3})
    with pytest.raises(UserError, match="other settings"):
        hessian_lora.eigen(method="pissa", blocks="per-module", out=out, **SMALL)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(UserError, match="not an eigen report"):
        hessian_lora.eigen(method="lora", out=tmp_path / "junk.json", **SMALL)


def test_checkpoint_with_trace_density_and_preconditioned_sharpness(tmp_path: Path) -> None:
    base = load_model("tiny-llama", device="cpu")
    config = AdapterConfig("lora", rank=2, targets=("v_proj",))
    model = build_adapter(base.model, config)
    optimizer = make_optimizer(model, config, 1e-2)
    batches = make_batches(base.tokenizer, load_task("arith", n_train=4, n_eval=0).train, 2)
    for batch in batches:
        optimizer.zero_grad()
        (loss_sum(model, batch) / batch.loss_tokens).backward()
        optimizer.step()
    meta = CheckpointMeta.from_config(config, base_model="tiny-llama", task="arith", lr=1e-2, step=2)
    save_checkpoint(tmp_path / "ckpt", model, meta, optimizer=optimizer)
    report = hessian_lora.eigen(
        tmp_path / "ckpt",
        samples=4,
        batch_size=2,
        tol=1e-4,
        trace=True,
        trace_hvps=9,
        density=True,
        density_steps=5,
        preconditioned=True,
        progress=False,
    )
    (block,) = report.blocks
    assert block.name == "adapter" and report.source["step"] == 2 and report.settings["task"] == "arith"
    assert block.trace is not None and block.trace.hvps == 9
    assert block.density is not None and sum(block.density.weights[0]) == pytest.approx(1.0)
    pre = block.preconditioned
    assert pre is not None and pre.lr == 1e-2 and pre.step == 2 and pre.eigen.converged
    assert pre.adam_threshold == pytest.approx(3800.0) and pre.gd_threshold == pytest.approx(200.0)
    assert block.hvps == block.eigen.hvps + 9 + block.density.hvps + pre.eigen.hvps

    save_checkpoint(tmp_path / "no-optimizer", model, meta)
    with pytest.raises(UserError, match="optimizer state"):
        hessian_lora.eigen(
            tmp_path / "no-optimizer", samples=4, batch_size=2, preconditioned=True, progress=False
        )


def test_a_checkpoint_is_measured_with_the_prompt_template_it_records(tmp_path: Path) -> None:
    """A sweep under alpaca records it in its checkpoints; eigen without a template uses it (the loss the adapter
    was trained on), an explicit template still wins, and old checkpoints (none recorded) mean chat."""
    base = load_model("tiny-llama", device="cpu")
    config = AdapterConfig("lora", rank=2, targets=("v_proj",))
    model = build_adapter(base.model, config)
    with torch.no_grad():  # a trained point (B ≠ 0), as a sweep's checkpoint would hold
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.3 * torch.randn_like(param))

    def saved(name: str, template: str | None) -> Path:
        extra = {"prompt_template": template} if template else {}
        meta = CheckpointMeta.from_config(config, base_model="tiny-llama", task="arith", step=1, extra=extra)
        return save_checkpoint(tmp_path / name, model, meta)

    common = {"samples": 4, "batch_size": 2, "tol": 1e-6, "smallest": False, "progress": False}
    recorded = hessian_lora.eigen(saved("alpaca", "alpaca"), **common)
    assert recorded.settings["prompt_template"] == "alpaca"
    explicit = hessian_lora.eigen(saved("alpaca2", "alpaca"), prompt_template="alpaca", **common)
    chat = hessian_lora.eigen(saved("chat", "alpaca"), prompt_template="chat", **common)
    old = hessian_lora.eigen(saved("old", None), **common)
    assert recorded.blocks[0].lambda_max == explicit.blocks[0].lambda_max
    assert old.blocks[0].lambda_max == chat.blocks[0].lambda_max  # nothing recorded: chat
    assert "prompt_template" not in chat.settings and "prompt_template" not in old.settings
    assert abs(chat.blocks[0].lambda_max - recorded.blocks[0].lambda_max) > 1e-3 * chat.blocks[0].lambda_max


def test_a_model_and_batches_passed_in(tmp_path: Path) -> None:
    base = load_model("tiny-llama", device="cpu")
    model = build_adapter(base.model, AdapterConfig("dora", rank=2, targets=("q_proj",)))
    batches = make_batches(base.tokenizer, load_task("arith", n_train=4, n_eval=0).train, 2)
    report = hessian_lora.eigen(
        model=model, batches=batches, solver="power", tol=1e-4, max_iter=300, progress=False
    )
    (block,) = report.blocks
    assert any("lora_magnitude_vector" in name for name in block.parameter_names)
    assert block.lambda_min is None and block.eigen.solver == "power"
    trainable = [p for p in model.parameters() if p.requires_grad]
    direct = lanczos(HessianOperator(model, batches, trainable), tol=1e-5)
    assert block.lambda_max == pytest.approx(direct.lambda_max, rel=1e-3)
    assert torch.is_grad_enabled()


def test_bad_requests_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nothing to analyse"):
        hessian_lora.eigen(progress=False)
    with pytest.raises(UserError, match="per-module"):
        hessian_lora.eigen(method="lora", modules="q_proj", **SMALL)
    with pytest.raises(UserError, match="solver"):
        hessian_lora.eigen(method="lora", solver="qr", **SMALL)
    with pytest.raises(UserError, match="no adapted module"):
        hessian_lora.eigen(method="lora", blocks="per-module", modules="k_proj", **SMALL)


def test_measure_settings_parse_yaml_data_and_name_unknown_keys() -> None:
    settings = MeasureSettings.from_mapping({"blocks": "per-module", "modules": "q_proj", "tol": "1e-2"})
    assert settings.modules == ("q_proj",) and settings.tol == 1e-2
    assert MeasureSettings.from_mapping(settings.options()) == settings
    assert settings.probe_only() == MeasureSettings(tol=1e-2)
    with pytest.raises(UserError, match="tolerance"):
        MeasureSettings.from_mapping({"tolerance": 1e-3}, source="sweep.yaml")
    with pytest.raises(UserError, match="blocks='per-module'"):
        MeasureSettings(layers="0:2")
    with pytest.raises(
        UserError, match=r"sweep\.yaml: unknown dora_norm 'true': use detached, differentiated"
    ):
        MeasureSettings.from_mapping({"dora_norm": "true"}, source="sweep.yaml")
    differentiated = MeasureSettings.from_mapping({"dora_norm": "differentiated"})
    assert differentiated.options() == {"dora_norm": "differentiated"}
    assert differentiated.probe_only() == differentiated  # it changes λ_max at initialisation too


@pytest.fixture(scope="module")
def dora_model() -> tuple[torch.nn.Module, list]:
    base = load_model("tiny-llama", device="cpu")
    model = build_adapter(base.model, AdapterConfig("dora", rank=2, targets=("q_proj",)))
    return model, make_batches(base.tokenizer, load_task("arith", n_train=4, n_eval=0).train, 2)


DORA = {"tol": 1e-4, "max_iter": 60, "smallest": False, "progress": False}


def test_dora_reports_say_which_hessian_they_hold_and_resume_only_under_it(
    dora_model, tmp_path: Path
) -> None:
    model, batches = dora_model
    detached = hessian_lora.eigen(model=model, batches=batches, out=tmp_path / "d.json", **DORA)
    differentiated = hessian_lora.eigen(
        model=model, batches=batches, dora_norm="differentiated", out=tmp_path / "t.json", **DORA
    )
    assert detached.settings["dora_norm"] == "detached" and read_report(tmp_path / "t.json") == differentiated
    assert differentiated.settings["dora_norm"] == "differentiated"
    (found,), (surrogate,) = differentiated.blocks, detached.blocks
    assert found.converged and surrogate.converged
    assert (
        abs(found.lambda_max - surrogate.lambda_max) > 1e-3 * surrogate.lambda_max
    )  # two matrices, even at init
    assert torch.is_grad_enabled() and all(
        "forward" not in vars(m) for m in model.modules() if "Dora" in type(m).__name__
    )

    # A DoRA report written before dora_norm existed holds peft's surrogate: it resumes under the default only.
    old = json.loads((tmp_path / "d.json").read_text())
    del old["settings"]["dora_norm"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    resumed = hessian_lora.eigen(model=model, batches=batches, out=tmp_path / "old.json", **DORA)
    assert resumed.blocks == detached.blocks and resumed.settings == detached.settings
    for written in ("old.json", "d.json"):
        with pytest.raises(UserError, match=r"other settings \(dora_norm\)"):
            hessian_lora.eigen(
                model=model, batches=batches, dora_norm="differentiated", out=tmp_path / written, **DORA
            )
    with pytest.raises(UserError, match=r"other settings \(dora_norm\)"):
        hessian_lora.eigen(model=model, batches=batches, out=tmp_path / "t.json", **DORA)


def test_dora_finite_differences_need_the_differentiated_norm(dora_model) -> None:
    model, batches = dora_model
    settings = {**DORA, "tol": 1e-3, "backend": "finite_difference"}
    with pytest.raises(UserError, match=r"DoRA.*differentiated"):
        hessian_lora.eigen(model=model, batches=batches, **settings)
    finite = hessian_lora.eigen(model=model, batches=batches, dora_norm="differentiated", **settings)
    exact = hessian_lora.eigen(model=model, batches=batches, dora_norm="differentiated", **DORA)
    assert finite.settings["backend"] == "finite_difference"
    assert finite.blocks[0].lambda_max == pytest.approx(exact.blocks[0].lambda_max, rel=1e-2)


def test_per_module_blocks_together_give_what_one_at_a_time_gives(tmp_path: Path) -> None:
    """The shared-pass scan and the block-by-block loop make the same products: the same reports."""
    together = hessian_lora.eigen(method="lora", blocks="per-module", out=tmp_path / "t.json", **SMALL)
    alone = hessian_lora.eigen(
        method="lora", blocks="per-module", together=False, out=tmp_path / "a.json", **SMALL
    )
    assert [b.name for b in together.blocks] == [
        b.name for b in alone.blocks
    ]  # model order, whatever finished first
    assert len(together.blocks) == 4
    for a, b in zip(together.blocks, alone.blocks):
        assert a.converged and b.converged
        assert a.hvps == b.hvps
        assert a.lambda_max == pytest.approx(b.lambda_max, rel=1e-5)
        assert a.lambda_min == pytest.approx(b.lambda_min, rel=1e-5)
    assert together.settings == alone.settings  # the grouping changes no value, so it is not in the settings
    # ... but each block says which shared-pass group it was solved in, so that a cost counts the group's
    # overlapping seconds once (analysis.report.eigen_wall_seconds); solved alone, a block is in none.
    groups = {block.scan_group for block in together.blocks}
    assert len(groups) == 1 and None not in groups
    assert all(block.scan_group is None for block in alone.blocks)
    assert [b.scan_group for b in read_report(tmp_path / "t.json").blocks] == [
        b.scan_group for b in together.blocks
    ]


def test_block_size_reaches_lanczos_from_python_and_is_recorded(tmp_path: Path) -> None:
    report = hessian_lora.eigen(
        method="lora",
        blocks="per-module",
        modules="q_proj",
        layers="0",
        block_size="rank",
        out=tmp_path / "r.json",
        **SMALL,
    )
    block = report.blocks[0]
    assert block.eigen.details["block_size"] == 2.0  # the adapter's rank
    assert report.settings["block_size"] == "rank"
    fixed = hessian_lora.eigen(
        method="lora",
        blocks="per-module",
        modules="q_proj",
        layers="0",
        block_size=3,
        out=tmp_path / "f.json",
        **SMALL,
    )
    assert fixed.blocks[0].eigen.details["block_size"] == 3.0
    assert fixed.blocks[0].lambda_max == pytest.approx(block.lambda_max, rel=1e-5)
    for bad in (0, -1, "wide", True):
        with pytest.raises(UserError, match="block_size"):
            MeasureSettings(block_size=bad)
    with pytest.raises(UserError, match="solver lanczos"):
        MeasureSettings(block_size=2, solver="power")
    assert MeasureSettings.from_mapping({"block_size": "4"}).block_size == 4


def test_blocks_together_come_in_groups_whose_krylov_vectors_fit_the_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = {**SMALL, "progress": True, "max_iter": 50}
    # Each block (r = 2 on a hidden-64 projection: 256 parameters) keeps up to 100 vectors of 1 KiB.
    grouped = hessian_lora.eigen(
        method="lora", blocks="per-module", krylov_memory=250_000 / 2**30, out=tmp_path / "g.json", **settings
    )
    printed = capsys.readouterr().err
    assert "4 per-module blocks solved together, 2 group(s) of at most 2" in printed
    alone = hessian_lora.eigen(
        method="lora",
        blocks="per-module",
        together=False,
        out=tmp_path / "a.json",
        **{**settings, "progress": False},
    )
    assert [b.lambda_max for b in grouped.blocks] == pytest.approx(
        [b.lambda_max for b in alone.blocks], rel=1e-5
    )
    assert all(b.converged for b in grouped.blocks)


def test_packed_batches_and_the_chunked_head_measure_the_same_lambda(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = {
        **SMALL,
        "samples": 12,
        "batch_size": 3,
        "blocks": "per-module",
        "layers": "0:1",
        "modules": "q_proj",
    }
    streamed = hessian_lora.eigen(method="lora", **common)
    packed = hessian_lora.eigen(
        method="lora",
        pack_tokens=600,
        lm_head_chunk=7,
        out=tmp_path / "p.json",
        **{**common, "progress": True},
    )
    (before,), (after,) = streamed.blocks, packed.blocks
    assert after.tokens == before.tokens and after.batches < before.batches == 4
    assert after.lambda_max == pytest.approx(before.lambda_max, rel=1e-5)
    assert after.lambda_min == pytest.approx(before.lambda_min, rel=1e-5)
    packing = packed.source["data"]["packing"]
    assert (
        packing["examples"] == 12 and packing["token_budget"] == 600 and packing["batches"] == after.batches
    )
    assert packed.settings["pack_tokens"] == 600 and "pack_tokens" not in streamed.settings
    assert "lm_head_chunk" not in packed.settings  # the same values to round-off: resumable either way
    err = capsys.readouterr().err
    assert "packed within 600 token slots" in err and "LM head in chunks of 7 tokens" in err
    auto = hessian_lora.eigen(method="lora", pack_tokens="auto", **common)
    assert auto.blocks[0].lambda_max == pytest.approx(before.lambda_max, rel=1e-5)
    assert auto.source["data"]["packing"]["batches"] == 1  # a tiny model: every sample fits one batch
    for bad in ({"pack_tokens": 0}, {"pack_tokens": "some"}, {"lm_head_chunk": 0}):
        with pytest.raises(UserError, match=r"pack_tokens|lm_head_chunk"):
            MeasureSettings(**bad)  # type: ignore[arg-type]


def test_the_start_reaches_lanczos_is_recorded_and_resumes_only_with_the_same_start(tmp_path: Path) -> None:
    random = hessian_lora.eigen(
        method="lora", blocks="per-module", modules="q_proj", layers="0", out=tmp_path / "r.json", **SMALL
    )
    assert "start" not in random.settings and "start_random_share" not in random.blocks[0].eigen.details
    for start in ("structured", "gradient"):
        for together in (True, False):
            report = hessian_lora.eigen(
                method="lora",
                blocks="per-module",
                modules="q_proj",
                start=start,
                together=together,
                out=tmp_path / f"{start}{together}.json",
                **SMALL,
            )
            assert report.settings["start"] == start
            for block in report.blocks:
                assert block.converged and block.eigen.details["start_first_order_passes"] == 1.0
                assert block.eigen.details["start_random_share"] == 0.5
            first = report.blocks[0]
            assert first.lambda_max == pytest.approx(random.blocks[0].lambda_max, rel=1e-3)
            assert first.lambda_min == pytest.approx(random.blocks[0].lambda_min, rel=1e-3)
    with pytest.raises(UserError, match="other settings \\(start\\)"):
        hessian_lora.eigen(
            method="lora",
            blocks="per-module",
            modules="q_proj",
            layers="0",
            start="gradient",
            out=tmp_path / "r.json",
            **SMALL,
        )
    with pytest.raises(UserError, match="solver lanczos"):
        MeasureSettings(start="structured", solver="power")
    with pytest.raises(UserError, match="unknown start"):
        MeasureSettings(start="clever")
