"""Write the notebooks of this directory; with ``--execute``, run them and keep their outputs.

    .venv/bin/python notebooks/make_notebooks.py              # the cells only, no outputs
    HESSIAN_LORA_MODEL=smollm2-135m .venv/bin/python notebooks/make_notebooks.py --execute   # what is committed

They are generated, not hand-edited, so that their code stays reviewable here and stays in step with the API.
Each defaults to the tiny preset (a random 2-layer Llama) and runs in a minute or two on a CPU; set the
environment variable ``HESSIAN_LORA_MODEL=smollm2-135m`` (or edit the first cell) for the real model. Notebook 02
reads the shipped replication, ``results/smollm2``, unless ``HESSIAN_LORA_RUN_DIR`` names another run directory.
The committed notebooks carry the outputs of ``--execute`` (each prints the model it used in its first output);
tests/test_notebooks.py checks their cells against this file and runs each on the tiny model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

COMMON = '''\
import io
import os
from pathlib import Path

import warnings

import torch
from IPython.display import Image, Markdown, display

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notebook bars need ipywidgets
torch.set_num_threads(int(os.environ.get("HESSIAN_LORA_THREADS", "1")))
ROOT = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()


def show(figure):
    """Display a matplotlib Figure as PNG (the toolkit draws on the Agg canvas, without pyplot)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    display(Image(data=buffer.getvalue()))'''


def checkpoint_eigenvalue() -> nbformat.NotebookNode:
    return new_notebook(
        cells=[
            new_markdown_cell(
                "# The max eigenvalue of a checkpoint\n\n"
                "Build an adapter at initialisation, save it as a checkpoint, and measure the top eigenvalue λ_max of "
                "the loss Hessian with respect to the adapter's parameters: first for the whole adapter, then per "
                "module (each projection's LoRA factors as one block, everything else fixed — the paper's blocks).\n\n"
                "Defaults: the tiny random Llama (seconds). For SmolLM2-135M set `HESSIAN_LORA_MODEL=smollm2-135m` "
                "(minutes per block on a CPU). The same numbers come from the command line: "
                "`hessian-lora init ... && hessian-lora eigen CHECKPOINT --blocks per-module`."
            ),
            new_code_cell(
                COMMON
                + """

MODEL = os.environ.get("HESSIAN_LORA_MODEL", "tiny-llama")
METHOD = "pissa"  # any of `hessian-lora methods`
RANK = 4
SAMPLES, BATCH_SIZE = 8, 4  # Hessian data: the first SAMPLES examples of the arithmetic task
LAYERS = None if MODEL.startswith("tiny-llama") else "0,14,29"  # the per-module scan's layers (None: all)
print(f"model: {MODEL}")"""
            ),
            new_markdown_cell("## A checkpoint at initialisation"),
            new_code_cell("""\
import tempfile

from hessian_lora.training.checkpoint import CheckpointMeta, save_checkpoint
from hessian_lora.training.adapters import AdapterConfig, build_adapter, trainable_parameters
from hessian_lora.inputs.models import load_model

config = AdapterConfig(method=METHOD, rank=RANK)
loaded = load_model(MODEL, device="cpu")
adapter = build_adapter(loaded.model, config)
checkpoint = Path(tempfile.mkdtemp(prefix="hessian-lora-")) / f"{METHOD}-init"
save_checkpoint(checkpoint, adapter, CheckpointMeta.from_config(config, base_model=MODEL, task="arith", step=0))
n_params = sum(p.numel() for p in trainable_parameters(adapter).values())
print(f"{METHOD} r={RANK} on {MODEL}: {n_params:,} adapter parameters, checkpoint {checkpoint}")"""),
            new_markdown_cell(
                "## λ_max of the whole adapter\n\n"
                "Lanczos with full re-orthogonalisation; the residual ‖Hv − λv‖ certifies the value (some eigenvalue "
                "lies within it of λ)."
            ),
            new_code_cell("""\
from hessian_lora import eigen

whole = eigen(checkpoint, task="arith", samples=SAMPLES, batch_size=BATCH_SIZE, progress=False)
block = whole.blocks[0]
print(f"λ_max = {block.lambda_max:.6g}   λ_min = {block.lambda_min:.6g}")
print(f"residual {block.residual:.2e}, converged {block.converged}, {block.hvps} Hessian-vector products, "
      f"{block.seconds:.1f} s over {block.tokens} loss tokens")
assert block.converged and block.lambda_max > 0"""),
            new_markdown_cell(
                "## Per-module scan\n\nOne block per adapted projection (here `q_proj` and `v_proj` of "
                "the layers `LAYERS`, every layer when None; drop `modules=` to scan all seven)."
            ),
            new_code_cell("""\
scan = eigen(checkpoint, task="arith", samples=SAMPLES, batch_size=BATCH_SIZE, blocks="per-module",
             modules="q_proj,v_proj", layers=LAYERS, progress=False)
rows = ["| block | parameters | λ_max | residual | converged | HVPs |", "|---|---|---|---|---|---|"]
for report in scan.blocks:
    rows.append(f"| {report.name} | {report.parameters:,} | {report.lambda_max:.5g} | {report.residual:.1e} | "
                f"{report.converged} | {report.hvps} |")
display(Markdown("\\n".join(rows)))
assert len(scan.blocks) >= 2"""),
            new_code_cell("""\
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hessian_lora.analysis.figures.plots import method_color, method_label

figure = Figure(figsize=(8, 3.8), layout="constrained")
FigureCanvasAgg(figure)
axes = figure.add_subplot()
names = [report.name for report in scan.blocks]
axes.bar(range(len(names)), [report.lambda_max for report in scan.blocks], color=method_color(METHOD))
axes.axhline(block.lambda_max, color="black", linestyle="--", label=f"whole adapter: {block.lambda_max:.3g}")
axes.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
axes.set_ylabel(r"$\\lambda_{\\max}$ of the block's Hessian")
axes.set_title(f"{method_label(METHOD)} at initialisation on {MODEL}: per-module $\\\\lambda_{{\\\\max}}$")
axes.legend()
show(figure)"""),
            new_markdown_cell(
                "The whole adapter's λ_max is at least every block's: a block's Hessian is a principal sub-matrix "
                "(Cauchy interlacing)."
            ),
            new_code_cell("""\
assert block.lambda_max >= max(report.lambda_max for report in scan.blocks) * (1 - 1e-3)"""),
            new_markdown_cell(
                "## Your own checkpoint on your own data\n\n"
                "Point `ADAPTER` at what your training left: a peft adapter directory (`save_pretrained`, "
                "or a Trainer's "
                "`checkpoint-N/`, whose step is read from `trainer_state.json`) or a hub repo id such as "
                "`user/my-lora` (add `revision=`), and `DATA` at a `.json`/`.jsonl` file of your prompt/response pairs "
                "(`PATH::PROMPT_FIELD,RESPONSE_FIELD` maps other field names). The base comes from the adapter's "
                "`base_model_name_or_path` (or `model=`). Left unset, this cell saves a small LoRA and three pairs "
                "of its own. The command line is the same: `hessian-lora eigen ADAPTER --data DATA --out report.json`; "
                "without "
                "`--data` a plain peft adapter is measured on the default arithmetic task, after a notice that says so."
            ),
            new_code_cell("""\
import json

from peft import LoraConfig, get_peft_model

ADAPTER = os.environ.get("HESSIAN_LORA_ADAPTER")  # a directory or a hub id
DATA = os.environ.get("HESSIAN_LORA_DATA")        # a .json/.jsonl file of your pairs
mine = Path(tempfile.mkdtemp(prefix="hessian-lora-mine-"))
if ADAPTER is None:  # stands for your trained adapter
    torch.manual_seed(0)
    peft_model = get_peft_model(load_model(MODEL, device="cpu").model,
                                LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=["q_proj", "v_proj"]))
    peft_model.peft_config["default"].base_model_name_or_path = MODEL
    peft_model.save_pretrained(mine / "my-lora")
    ADAPTER = str(mine / "my-lora")
if DATA is None:  # stands for your data
    pairs = [("What is 12 + 30?", "42"), ("What is 7 * 6?", "42"), ("What is 50 - 8?", "42")]
    (mine / "pairs.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\\n" for q, a in pairs))
    DATA = str(mine / "pairs.jsonl")

own = eigen(ADAPTER, task=DATA, samples=SAMPLES, batch_size=BATCH_SIZE, progress=False)
data = own.source["data"]
print(f"{own.source['method']} r={own.source['rank']} on {own.source['base_model']}, step {own.source['step']}")
print(f"measured on {data['source']}: {data['examples']} examples, template {data['prompt_template']}, "
      f"{data['loss_tokens']} loss tokens")
print(f"λ_max = {own.blocks[0].lambda_max:.6g} (residual {own.blocks[0].residual:.1e}, "
      f"converged {own.blocks[0].converged})")
assert data["source"] == DATA and not data["default"]"""),
        ]
    )


def lr_vs_sharpness() -> nbformat.NotebookNode:
    return new_notebook(
        cells=[
            new_markdown_cell(
                "# Learning rate vs sharpness\n\n"
                "Load a sweep's run directory, find each method's optimal learning rate η* and its λ_max at "
                "initialisation, and relate them (Spearman ρ, the log-log slope with a bootstrap interval, "
                "η* ≈ c/λ_max, and the 2/λ and Adam bounds).\n\n"
                "`RUN_DIR` defaults to the shipped three-seed replication, `results/smollm2` (SmolLM2-135M, seven "
                "methods, 108 runs), which this notebook only reads. Point `HESSIAN_LORA_RUN_DIR` at your own sweep's "
                "directory (`hessian-lora demo --quick` makes a small one in about a minute)."
            ),
            new_code_cell(
                COMMON
                + """

RUN_DIR = Path(os.environ.get("HESSIAN_LORA_RUN_DIR", ROOT / "results" / "smollm2"))
print(f"run directory: {RUN_DIR}")"""
            ),
            new_markdown_cell("## The table"),
            new_code_cell("""\
from hessian_lora.analysis import analyze, markdown_table

result = analyze(RUN_DIR)
display(Markdown(markdown_table(result)))"""),
            new_markdown_cell("## The relation, in numbers"),
            new_code_cell("""\
relation = result.relation
print(f"metric: {result.metric} ({'higher' if result.higher_is_better else 'lower'} is better)")
for name, summary in result.methods.items():
    print(f"{name:>9}: η* = {summary.eta_star:.3g} ({summary.fit_kind}), λ_max at init = "
          f"{summary.lambda_init_whole}, η*·λ/2 = {summary.eta_lambda_over_2}")
print("Spearman ρ:", relation.spearman_rho, " slope:", relation.slope, " 95% CI:", relation.slope_ci95)
print("c in η* ≈ c/λ_max:", relation.c, " LOMO within 2×:", dict(relation.lomo_within_2x))"""),
            new_markdown_cell(
                "## The figures\n\nOne colour per method in every figure (`hessian_lora.analysis.figures.plots."
                "METHOD_COLORS`); figures whose data the run lacks are skipped."
            ),
            new_code_cell("""\
from hessian_lora.analysis import read_run_directory
from hessian_lora.analysis.figures.plots import FIGURE_NAMES, make_figures

figures = make_figures(read_run_directory(RUN_DIR), result)
for key, figure in figures.items():
    display(Markdown(f"**({key}) {FIGURE_NAMES[key]}**" + ("" if figure else ": no data in this run")))
    if figure is not None:
        show(figure)
assert figures["a"] is not None"""),
        ]
    )


def spectrum_explorer() -> nbformat.NotebookNode:
    return new_notebook(
        cells=[
            new_markdown_cell(
                "# Spectrum explorer\n\n"
                "Train a LoRA adapter for a few steps (the toolkit's trainer keeps Adam's state in the checkpoint), "
                "then look at its loss-Hessian spectrum: the top-k eigenvalues and λ_min (Lanczos), the trace "
                "(Hutch++), the spectral density (stochastic Lanczos quadrature), power iteration against Lanczos, "
                "and the Adam-preconditioned sharpness λ₁(P⁻¹H) against Adam's edge of stability "
                "(2+2β₁)/((1−β₁)η) and the raw λ_max against gradient descent's 2/η."
            ),
            new_code_cell(
                COMMON
                + """

MODEL = os.environ.get("HESSIAN_LORA_MODEL", "tiny-llama")
METHOD, RANK, LR, STEPS = "lora", 4, 1e-2, 20
SAMPLES, BATCH_SIZE = 8, 4"""
            ),
            new_markdown_cell("## A short training run"),
            new_code_cell("""\
import tempfile

from hessian_lora.training.checkpoint import CheckpointMeta, save_checkpoint
from hessian_lora.inputs.tasks import load_task
from hessian_lora.training.adapters import AdapterConfig, build_adapter, make_optimizer
from hessian_lora.inputs.models import load_model
from hessian_lora.training.train import TrainConfig, train

config = AdapterConfig(method=METHOD, rank=RANK)
loaded = load_model(MODEL, device="cpu")
adapter = build_adapter(loaded.model, config)
task = load_task("arith", seed=0, n_train=64, n_eval=0)
optimizer = make_optimizer(adapter, config, LR, betas=(0.9, 0.999), weight_decay=0.0, eps=1e-8)
result = train(adapter, loaded.tokenizer, task.train, TrainConfig(lr=LR, steps=STEPS, batch_size=8, max_length=96),
               optimizer=optimizer, progress=False)
checkpoint = Path(tempfile.mkdtemp(prefix="hessian-lora-")) / "trained"
save_checkpoint(checkpoint, adapter, CheckpointMeta.from_config(config, base_model=MODEL, task="arith", lr=LR,
                                                                step=result.steps), optimizer=optimizer)
print(f"{result.status}: loss {result.initial_loss:.3f} -> {result.train_loss:.3f} in {result.steps} steps")"""),
            new_markdown_cell("## Top-k, trace, density and preconditioned sharpness in one call"),
            new_code_cell("""\
from hessian_lora import eigen

report = eigen(checkpoint, task="arith", samples=SAMPLES, batch_size=BATCH_SIZE, max_length=96, top_k=3,
               trace=True, trace_hvps=20, density=True, density_steps=20, preconditioned=True, lr=LR,
               progress=False)
block = report.blocks[0]
print("top-3 eigenvalues:", [f"{value:.5g}" for value in block.eigen.largest])
print(f"λ_min = {block.lambda_min:.5g};  residual of λ_max {block.residual:.1e};  converged {block.converged}")
print(f"trace ≈ {block.trace.trace:.4g} ± {block.trace.std_error or 0:.2g} over {block.trace.size:,} parameters "
      f"(mean eigenvalue {block.trace.trace / block.trace.size:.3g})")"""),
            new_markdown_cell("## Spectral density"),
            new_code_cell("""\
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hessian_lora.analysis.figures.plots import method_color, method_label

density = block.density
nodes = np.concatenate([np.asarray(run) for run in density.nodes])
span = float(nodes.max() - nodes.min())
grid = np.linspace(nodes.min() - 0.05 * span, nodes.max() + 0.05 * span, 600)
values = density.smoothed(grid, sigma=span / 100).numpy()
figure = Figure(figsize=(8, 3.8), layout="constrained")
FigureCanvasAgg(figure)
axes = figure.add_subplot()
axes.semilogy(grid, values, color=method_color(METHOD))
axes.set_ylim(values.max() * 1e-5, values.max() * 3)
for value in block.eigen.largest:
    axes.axvline(value, color="black", linestyle=":", linewidth=0.8)
axes.set_xlabel("eigenvalue λ of the loss Hessian w.r.t. the adapter")
axes.set_ylabel("spectral density (SLQ, smoothed)")
axes.set_title(f"{method_label(METHOD)} after {result.steps} steps at η = {LR:g} (dotted: top-3 by Lanczos)")
show(figure)
print(f"SLQ moment check: ∫λ dμ · size = {density.moment(1) * density.size:.4g} vs trace {block.trace.trace:.4g}")"""),
            new_markdown_cell(
                "## Power iteration against Lanczos\n\nPlain power iteration finds the largest |λ|; the "
                "toolkit's targets the largest algebraic eigenvalue and reports when it does not "
                "converge."
            ),
            new_code_cell("""\
power = eigen(checkpoint, task="arith", samples=SAMPLES, batch_size=BATCH_SIZE, max_length=96, solver="power",
              max_iter=60, progress=False).blocks[0]
figure = Figure(figsize=(8, 3.6), layout="constrained")
FigureCanvasAgg(figure)
axes = figure.add_subplot()
for label, result_block, style in (("Lanczos (top-3)", block, "o-"), ("power iteration", power, "s--")):
    solve = result_block.eigen
    axes.plot([record.hvps for record in solve.history], [max(record.values) for record in solve.history], style,
              markersize=3, label=f"{label}: {solve.largest[0]:.5g} after {solve.hvps} HVPs "
                                  f"(converged {solve.converged})")
axes.set_xlabel("Hessian-vector products")
axes.set_ylabel(r"$\\lambda_{\\max}$ estimate")
axes.set_title("Largest eigenvalue: Lanczos vs power iteration on the same checkpoint")
axes.legend()
show(figure)"""),
            new_markdown_cell("## Preconditioned vs raw sharpness"),
            new_code_cell("""\
pre = block.preconditioned
print(f"raw λ_max = {block.lambda_max:.4g}   vs gradient descent's 2/η = {pre.gd_threshold:.4g}")
print(f"preconditioned λ₁(P⁻¹H) = {pre.sharpness:.4g}   vs Adam's (2+2β₁)/((1−β₁)η) = {pre.adam_threshold:.4g} "
      f"(β₁ = {pre.beta1})")
print(f"ratio to Adam's edge of stability: {pre.sharpness / pre.adam_threshold:.3f}")
assert pre.sharpness > 0"""),
            new_markdown_cell(
                "## Sharpness along training (the dynamics view)\n\n"
                "`hessian_lora.measurement.training_probe.SharpnessProbe` measures λ_max and Adam's preconditioned "
                "sharpness λ₁(P⁻¹H) "
                "from the live optimizer state every few steps of a run (warm-started Lanczos: a few products per "
                "probe; training itself is untouched). Divided by their limits, λ·η/2 (gradient descent) and "
                "λ̃·η/((2+2β₁)/(1−β₁)) (Adam, 38 at β₁ = 0.9), a curve at 1 is at the edge of stability. In a sweep: "
                "`hessian: {during: {every: N}}`; in a transformers Trainer: "
                "`hessian_lora.measurement.trainer_callback."
                "SharpnessCallback`."
            ),
            # Its two plot lines run past 120 (the noqa at the string's end): the notebook is committed executed.
            new_code_cell("""\
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hessian_lora.inputs.tasks import make_batches
from hessian_lora.measurement.training_probe import DuringSettings, SharpnessProbe, stability_ratios

probe_batches = make_batches(loaded.tokenizer, task.train[:8], 4, max_length=96)
dynamics_lrs = [LR / 10, LR]
histories = {}
for lr in dynamics_lrs:
    base = load_model(MODEL, device="cpu")
    model = build_adapter(base.model, config)
    probe = SharpnessProbe(model, probe_batches, DuringSettings(every=2, tol=1e-2), total_steps=8)
    train(model, base.tokenizer, task.train, TrainConfig(lr=lr, steps=8, batch_size=8, max_length=96),
          optimizer=make_optimizer(model, config, lr), progress=False, probe=probe)
    histories[lr] = [point.to_dict() for point in probe.history]
    print(f"lr {lr:.0e}: " + ", ".join(f"step {p['step']}: λ={p['lambda_max']:.3g} λ̃={p['preconditioned'] or 0:.3g} "
                                         f"({p['hvps'] + p['precond_hvps']} HVPs)" for p in histories[lr]))

figure = Figure(figsize=(7, 3.6))
FigureCanvasAgg(figure)
axes = figure.subplots()
for lr, history in histories.items():
    ratios = [(p["step"], *stability_ratios(p, beta1=0.9)) for p in history]
    axes.plot([s for s, _, a in ratios if a], [a for _, _, a in ratios if a], marker="o", label=f"Adam λ̃·η/38, lr {lr:.0e}")
    axes.plot([s for s, g, _ in ratios if g], [g for _, g, _ in ratios if g], linestyle=":", label=f"GD λ·η/2, lr {lr:.0e}")
axes.axhline(1.0, color="black", linestyle="--", linewidth=0.9)
axes.set_yscale("log")
axes.set_xlabel("optimizer step")
axes.set_ylabel("sharpness × η / limit")
axes.legend(fontsize=7)
show(figure)
assert all(p["lambda_max"] > 0 for history in histories.values() for p in history)"""),  # noqa: E501
        ]
    )


def trainer_and_recommendation() -> nbformat.NotebookNode:
    return new_notebook(
        cells=[
            new_markdown_cell(
                "# Sharpness in your Trainer, and a learning rate before you sweep\n\n"
                "Two ways the toolkit meets a fine-tuning run: `SharpnessCallback` measures λ_max and Adam's "
                "preconditioned sharpness λ₁(P⁻¹H) every few steps inside TRL's `SFTTrainer` (or a plain "
                "`transformers` `Trainer`) and logs them beside the loss; `recommend` predicts a method's optimal "
                "learning rate from one λ_max probe at initialisation and the shipped calibration.\n\n"
                "Defaults: the tiny random Llama (seconds). `HESSIAN_LORA_MODEL=smollm2-135m` for the real model, "
                "which the shipped calibration was measured on."
            ),
            new_code_cell(
                COMMON
                + """

MODEL = os.environ.get("HESSIAN_LORA_MODEL", "tiny-llama")
STEPS, EVERY = (8, 2) if MODEL.startswith("tiny-llama") else (24, 4)
RANK = 4 if MODEL.startswith("tiny-llama") else None  # None: the calibration's rank (64)
print(f"model: {MODEL}")"""
            ),
            new_markdown_cell("## Sharpness along training in `SFTTrainer`"),
            new_code_cell("""\
import tempfile

import datasets
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

import hessian_lora as h
from hessian_lora.inputs.tasks import load_task

loaded = h.load_model(MODEL, device="cpu")
task = load_task("arith", seed=0, n_train=64, n_eval=0)
train = datasets.Dataset.from_list([{"prompt": e.prompt, "completion": e.response} for e in task.train])
config = SFTConfig(output_dir=tempfile.mkdtemp(prefix="hessian-lora-sft-"), per_device_train_batch_size=4,
                   max_steps=STEPS, learning_rate=1e-3, logging_steps=EVERY, save_strategy="no", report_to="none",
                   use_cpu=True, disable_tqdm=True, max_length=96, bf16=False)
trainer = SFTTrainer(model=loaded.model, args=config, train_dataset=train, processing_class=loaded.tokenizer,
                     peft_config=LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
h.SharpnessCallback.install(trainer, every=EVERY, settings=h.DuringSettings(tol=1e-2, max_iter=40))
trainer.train()
probes = [e for e in trainer.state.log_history if "sharpness/lambda_max" in e]
rows = ["| step | λ_max | λ₁(P⁻¹H) | certified |", "|---|---|---|---|"]
for entry in probes:
    pre = entry.get("sharpness/preconditioned")
    rows.append(f"| {entry['step']} | {entry['sharpness/lambda_max']:.4g} | {'–' if pre is None else f'{pre:.4g}'} "
                f"| {bool(entry.get('sharpness/converged'))} |")
display(Markdown("\\n".join(rows)))
assert len(probes) == STEPS // EVERY + 1"""),
            new_code_cell("""\
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

figure = Figure(figsize=(8, 3.4), layout="constrained")
FigureCanvasAgg(figure)
raw, adam = figure.subplots(1, 2)
raw.plot([e["step"] for e in probes], [e["sharpness/lambda_max"] for e in probes], marker="o")
raw.set_xlabel("optimizer step")
raw.set_ylabel(r"$\\lambda_{\\max}$ of the loss Hessian")
later = [e for e in probes if e.get("sharpness/adam_ratio") is not None]
adam.plot([e["step"] for e in later], [e["sharpness/adam_ratio"] for e in later], marker="o")
adam.axhline(1.0, color="black", linestyle="--", label="Adam's edge of stability")
adam.set_xlabel("optimizer step")
adam.set_ylabel(r"$\\lambda_1(P^{-1}H)\\cdot\\eta\\,/\\,\\frac{2+2\\beta_1}{1-\\beta_1}$")
adam.legend(fontsize=8)
figure.suptitle(f"LoRA r=8 on {MODEL} in SFTTrainer (no Adam state at step 0, so no preconditioned value)")
show(figure)"""),
            new_markdown_cell(
                "## A learning rate before any sweep\n\n"
                "One λ_max probe of each method's adapter at initialisation, mapped to η* by the calibration (η* "
                "against λ_max over the SmolLM2 demo's methods). On another model than the calibration's, the "
                "recommendation says so."
            ),
            new_code_cell("""\
from hessian_lora.sweep.recommend import recommend

for method in ("lora", "pissa"):
    advice = recommend(method, model=MODEL, rank=RANK, progress=False)
    display(Markdown("\\n".join(f"- {line}" for line in advice.lines())))
    assert advice.eta > 0 and advice.grid"""),
        ]
    )


NOTEBOOKS = {
    "01_checkpoint_eigenvalue.ipynb": checkpoint_eigenvalue,
    "02_lr_vs_sharpness.ipynb": lr_vs_sharpness,
    "03_spectrum_explorer.ipynb": spectrum_explorer,
    "04_trainer_and_recommendation.ipynb": trainer_and_recommendation,
}


def main(argv: list[str] | None = None) -> None:
    """Write every notebook; with ``--execute`` run each (nbclient, from this directory) and keep its outputs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--execute", action="store_true", help="run each notebook and write it with its outputs"
    )
    parser.add_argument("--only", nargs="*", default=None, help="notebook file names (default: all)")
    args = parser.parse_args(argv)
    for name, build in NOTEBOOKS.items():
        if args.only and name not in args.only:
            continue
        notebook = build()
        for index, cell in enumerate(notebook.cells):
            cell.id = f"{Path(name).stem[:2]}-{index:02d}"  # stable ids: regenerating gives no diff
        notebook.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        notebook.metadata["language_info"] = {"name": "python"}
        if args.execute:
            from nbclient import NotebookClient  # local: only --execute runs a kernel

            NotebookClient(
                notebook, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
            ).execute()
        nbformat.validate(notebook)
        nbformat.write(notebook, HERE / name)
        print(f"wrote {HERE / name}" + (" (executed)" if args.execute else ""))


if __name__ == "__main__":
    main()
