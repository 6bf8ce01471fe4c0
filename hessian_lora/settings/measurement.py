"""A Hessian measurement's settings: :class:`MeasureSettings` (``eigen``, the sweep's ``hessian:`` block,
calibrations) and :class:`DuringSettings` (the in-run probe, ``hessian.during``), on one vocabulary and one set
of checks.

Each :class:`MeasureSettings` field carries its own command-line help and flag in its metadata, so that
``hessian-lora eigen``'s options are generated from the fields (:func:`hessian_lora.cli.commands.eigen.register`)
and the report's ``settings`` are derived from them (:meth:`MeasureSettings.to_dict`), instead of being written
out again by hand in three places.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, get_args

from hessian_lora.core.bounds import krylov_gib, tolerance
from hessian_lora.core.errors import UserError
from hessian_lora.core.yaml_reader import is_number, numbers_from_strings, plain, settings_from_mapping
from hessian_lora.settings import solvers
from hessian_lora.settings.prompts import DEFAULT_PROMPT_TEMPLATE, check_prompt_template

# A solver's name: one of the solver table's (settings/solvers.py), checked against the table when settings are made
# (so a solver added to the table is a choice at once); an in-run probe's solver must warm-start.
Solver: TypeAlias = str
ProbeSolver: TypeAlias = str
Blocks = Literal["whole", "per-module"]
# The engine's Hessian-vector products (hessian/operator.py); a setting may also say "auto" (the engine's choice
# for the device, resolved before a report records it).
EngineBackend = Literal["double_backward", "forward_over_reverse", "finite_difference"]
Backend = Literal["auto", EngineBackend]
# DoRA's column norm: peft's surrogate with it detached, or the true loss with it differentiated (hessian/dora.py).
DoraNorm = Literal["detached", "differentiated"]
SOLVERS: tuple[str, ...] = solvers.names()  # the command line's choices, as the table has them at start-up
PROBE_SOLVERS: tuple[str, ...] = solvers.having("warm_starts")
BLOCKS: tuple[str, ...] = get_args(Blocks)
ENGINE_BACKENDS: tuple[str, ...] = get_args(EngineBackend)
BACKENDS: tuple[str, ...] = get_args(Backend)
PROBE_BACKENDS = BACKENDS  # the probe offers every backend a measurement does
DORA_NORMS: tuple[str, ...] = get_args(DoraNorm)
# Lanczos's start (hessian/starts.py): random, LoRA's structure at initialisation, or the block's gradient; every
# non-random start keeps a random component.
Start = Literal["random", "structured", "gradient"]
STARTS: tuple[str, ...] = get_args(Start)
# The choices of each field that has a vocabulary: one table for the checks, the CLI and its test.
CHOICES: dict[str, tuple[str, ...]] = {
    "solver": SOLVERS,
    "blocks": BLOCKS,
    "backend": BACKENDS,
    "dora_norm": DORA_NORMS,
    "start": STARTS,
}


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """``"a:b"`` (a ≤ i < b, either end optional only on the left: ``":4"``), ``"3"``, or ``"0,5,10"``."""
    if text is None or text.strip() in ("", "all"):
        return None
    layers: list[int] = []
    try:
        for item in text.split(","):
            item = item.strip()
            if ":" in item:
                start_text, _, stop_text = item.partition(":")
                start = int(start_text) if start_text.strip() else 0
                stop = int(stop_text)
                if stop <= start:
                    raise ValueError
                layers.extend(range(start, stop))
            else:
                layers.append(int(item))
    except ValueError:
        raise UserError(
            f"bad layers {text!r}: write a:b (a <= layer < b), a single index, or a list 0,5,10."
        ) from None
    if any(i < 0 for i in layers):
        raise UserError(f"bad layers {text!r}: layer indices are >= 0.")
    return tuple(dict.fromkeys(layers))


def parse_modules(text: str | None) -> tuple[str, ...] | None:
    """``"q_proj,v_proj"`` as a tuple of distinct names; None or ``"all"``: every module."""
    if text is None or text.strip() in ("", "all"):
        return None
    modules = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not modules:
        raise UserError(f"bad modules {text!r}: list module names, e.g. q_proj,v_proj.")
    return modules


# ----------------------------------------------------------------------------------------------------------
# The checks both settings classes run, each once; ``prefix`` names the block a message is about.


def _check_integers(settings: Any, names: tuple[str, ...], minimum: int, prefix: str = "") -> None:
    for name in names:
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise UserError(f"{prefix}{name} must be an integer >= {minimum}, got {value!r}.")


def _check_booleans(settings: Any, names: tuple[str, ...], prefix: str = "") -> None:
    for name in names:
        if not isinstance(getattr(settings, name), bool):
            raise UserError(f"{prefix}{name} must be true or false, got {getattr(settings, name)!r}.")


def _check_choices(settings: Any, choices: Mapping[str, tuple[str, ...]], prefix: str = "") -> None:
    for name, allowed in choices.items():
        if getattr(settings, name) not in allowed:
            raise UserError(f"unknown {prefix}{name} {getattr(settings, name)!r}: use {', '.join(allowed)}.")


def _read_numbers(settings: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(settings, name)
        if isinstance(value, str):
            object.__setattr__(settings, name, numbers_from_strings(value))  # PyYAML reads 1e-3 as a string


# ----------------------------------------------------------------------------------------------------------
# MeasureSettings' fields, each with what the command line and the report need to know about it.

# "dora_modules": recorded only for a model with DoRA modules (so reports of other models are as they always were).
ReportRule = Literal["always", "when_set", "never", "dora_modules"]


def _count_or_word(settings: Any, name: str, word: str | None, what: str) -> None:
    """Field ``name`` of ``settings``: None, ``word``, or a whole number >= 1 (digits from a command line or YAML
    text become the number); anything else is a :class:`UserError` saying it must be ``what``."""
    value = getattr(settings, name)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
        object.__setattr__(settings, name, value)
    if (
        value is not None
        and (word is None or value != word)
        and (isinstance(value, bool) or not isinstance(value, int) or value < 1)
    ):
        raise UserError(f"{name} must be {what}, got {value!r}.")


def _solver_help() -> str:
    """``--solver``'s help from the table: each solver's name and what it computes."""
    described = [f"{name} ({solvers.get(name).summary})" for name in solvers.names()]
    return ", ".join(described[:-1]) + (", or " if len(described) > 1 else "") + described[-1]


def _setting(
    default: Any,
    help: str,
    *,
    group: str,
    flag: str | None = None,
    off_flag: str | None = None,
    off_value: Any = False,
    report: ReportRule = "always",
    active: Callable[[Any], bool] | None = None,
    metavar: str | None = None,
    default_help: str | None = None,
    unset: tuple[Any, ...] = (None,),
) -> Any:
    """A field of :class:`MeasureSettings` with its metadata: ``help`` and ``group`` of its command-line option,
    its ``flag`` (default ``--field-name``), or ``off_flag`` for a switch that sets ``off_value``; ``report``:
    whether the report's settings record it (``when_set``: only when not the default, so reports written before
    the field existed still resume; ``dora``: only for a model with DoRA modules); ``active``: when False the
    report records the field as None (a budget of an extra not asked for); ``default_help``: the default in
    words where the value alone (None) would not say it; ``unset``: the values ``when_set`` does not record."""
    return dataclasses.field(
        default=default,
        metadata={
            "help": help,
            "group": group,
            "flag": flag,
            "off_flag": off_flag,
            "off_value": off_value,
            "report": report,
            "active": active,
            "metavar": metavar,
            "default_help": default_help,
            "unset": unset,
        },
    )


@dataclass(frozen=True)
class MeasureSettings:
    """What a Hessian measurement computes, and from which data when it builds its own batches.

    Data (used when :func:`~hessian_lora.measurement.measure.measure` gets no batches): ``task`` (a task spec or a
    .json/.jsonl file; None: the checkpoint's task, else ``arith``) cut to ``samples`` examples in batches of
    ``batch_size`` of at most ``max_length`` tokens, picked by ``data_seed``, formatted with ``prompt_template``
    (None: the one the checkpoint records it was trained or initialised with, else ``chat``; a template the
    adapter never saw measures another loss). Blocks: ``whole`` (one block, the whole adapter) or
    ``per-module`` (one per adapted module, optionally only ``modules`` on ``layers``). Solver: ``top_k``
    eigenvalues per end to a relative residual ``tol`` in at most ``max_iter`` iterations from start vectors
    drawn by ``seed``; ``smallest`` also finds λ_min (Lanczos only); ``block_size``: Lanczos's start vectors per
    block (None: ``top_k``; ``"rank"``: the block's LoRA rank r, the width of the cluster λ_max sits in at
    initialisation, where fewer start vectors can certify a lower member of the cluster). It costs r products a
    step, and on the CPU batching does not make a product cheaper (bench/batched_products.py), so the default
    stays ``top_k``; reports record it when set. ``start``: what the first start vector is (``random``;
    ``structured``: LoRA's structure at initialisation, each module's base-weight gradient's top singular pair;
    ``gradient``: the block's gradient; both keep a random half, :mod:`hessian_lora.hessian.starts`); reports
    record it when not random, and each block's ``eigen.details`` the random share and the first-order passes and
    seconds the start took (docs/start-vectors.md). ``together``: per-module blocks advance side by side on shared
    passes (:mod:`hessian_lora.hessian.scan`; the same products, so the same values to round-off; a block's
    ``seconds`` is then the wall time until it finished, shared with the others); false solves them block
    after block (reports do not record it). Extras: Hutch++ ``trace`` (``trace_hvps`` products), SLQ
    ``density`` (``density_steps`` × ``density_runs``), Adam-``preconditioned`` sharpness with the thresholds of
    learning rate ``lr`` (None: the checkpoint's). Engine: the Hessian-vector product ``backend``, whether each
    batch's first-order graph is kept between products (``reuse``) and the GiB the Krylov vectors may take on
    the device (``krylov_memory``; None: sized from the free memory, see :mod:`hessian_lora.hessian.memory_plan`;
    it changes where vectors live and how many products the final check costs, never a value, so reports do not
    record it). DoRA: ``dora_norm`` ``"detached"`` measures the Hessian of peft's surrogate, whose column norm
    ‖W + sBA‖ is a constant (what DoRA trains with; the paper and PyHessian measure it too), ``"differentiated"``
    that of the true loss (:mod:`hessian_lora.hessian.dora`); reports of DoRA models record which. Throughput
    (docs/gpu-throughput.md): ``pack_tokens`` regroups the samples into as few batches as that many token slots
    allow (``"auto"``: from the memory plan), the same token-weighted loss; ``lm_head_chunk`` runs the LM head
    over that many loss tokens at a time (:class:`hessian_lora.hessian.loss.ChunkedHeadLoss`).

    Attributes:
        task: task spec.
        samples: examples to average the loss over (the paper used 500).
        batch_size: examples per batch.
        max_length: token limit per example.
        data_seed: seed that picks the examples.
        blocks: one block for the whole adapter (whole) or one per adapted module.
        modules: per-module: module names, e.g. q_proj,v_proj.
        layers: per-module: layers a:b (a <= i < b), 3, or 0,5,10.
        solver: lanczos (λ_max and λ_min), power (shifted, largest algebraic), or pyhessian (PyHessian 0.1's
            power iteration, for comparison).
        top_k: eigenvalues per end.
        smallest: lanczos: skip λ_min (fewer products).
        tol: relative residual ||Hv - λv|| <= tol·|λ|.
        max_iter: iteration cap per block.
        seed: seed of the start vectors.
        backend: Hessian-vector product backend.
        trace: Hutch++ estimate of tr(H).
        trace_hvps: Hutch++ budget in products.
        density: spectral density by stochastic Lanczos quadrature.
        density_steps: Lanczos steps per SLQ run.
        density_runs: SLQ runs.
        preconditioned: Adam-preconditioned sharpness λ1(P^-1 H) from the checkpoint's optimizer state, with
            the thresholds 2/lr and (2+2β1)/((1-β1)lr).
        lr: learning rate for the thresholds.
        reuse: do not keep each batch's first-order graph between products (saves memory).
        prompt_template: use the one the adapter was trained with.
        dora_norm: DoRA: the Hessian of peft's surrogate with the column norm detached (what DoRA trains with)
            or of the true loss with the norm differentiated.
        krylov_memory: GiB the Krylov vectors may take on the device (on a GPU as much again in pinned host
            memory); beyond it kept products are dropped, then the basis stops growing.
        block_size: lanczos: start vectors per block; 'rank' takes the block's LoRA rank r, the width of the
            cluster λ_max sits in at initialisation (r products a step).
        start: lanczos: the start vector: random, structured (LoRA at initialisation: from each module's base-
            weight gradient G, its top singular pair; one first-order pass) or gradient (the block's own
            gradient); the last two keep a random half, so a start that misses the top cannot hide it.
        together: per-module: solve the blocks one after another instead of side by side on shared passes.
        pack_tokens: pack the samples, longest first, into as few batches as this many token slots (sequences
            × the longest) allow, or 'auto' from the memory plan: the same loss and Hessian in fewer, fuller
            batches.
        lm_head_chunk: run the LM head over this many loss tokens at a time, never every logit of a batch (the
            same values to round-off; double_backward or finite_difference).
    """

    task: str | None = _setting(
        None, "task spec", group="data", default_help="the checkpoint's task, else arith"
    )
    samples: int = _setting(64, "examples to average the loss over (the paper used 500)", group="data")
    batch_size: int = _setting(8, "examples per batch", group="data")
    max_length: int = _setting(512, "token limit per example", group="data")
    data_seed: int = _setting(0, "seed that picks the examples", group="data")
    blocks: Blocks = _setting(
        "whole", "one block for the whole adapter (whole) or one per adapted module", group="blocks"
    )
    modules: tuple[str, ...] | None = _setting(
        None, "per-module: module names, e.g. q_proj,v_proj", group="blocks", default_help="all"
    )
    layers: tuple[int, ...] | None = _setting(
        None, "per-module: layers a:b (a <= i < b), 3, or 0,5,10", group="blocks", default_help="all"
    )
    solver: Solver = _setting(solvers.DEFAULT_SOLVER, _solver_help(), group="blocks")
    top_k: int = _setting(1, "eigenvalues per end", group="blocks")
    smallest: bool = _setting(
        True,
        "lanczos: skip λ_min (fewer products)",
        group="blocks",
        off_flag="--no-min",
        active=lambda s: solvers.get(s.solver).finds_smallest,
    )
    tol: float = _setting(1e-3, "relative residual ||Hv - λv|| <= tol·|λ|", group="blocks")
    max_iter: int = _setting(100, "iteration cap per block", group="blocks")
    seed: int = _setting(0, "seed of the start vectors", group="blocks", flag="--solver-seed")
    backend: Backend = _setting(
        "auto", "Hessian-vector product backend", group="engine", default_help="auto, the fastest exact one"
    )
    trace: bool = _setting(False, "Hutch++ estimate of tr(H)", group="extras")
    trace_hvps: int = _setting(30, "Hutch++ budget in products", group="extras", active=lambda s: s.trace)
    density: bool = _setting(False, "spectral density by stochastic Lanczos quadrature", group="extras")
    density_steps: int = _setting(30, "Lanczos steps per SLQ run", group="extras", active=lambda s: s.density)
    density_runs: int = _setting(1, "SLQ runs", group="extras", active=lambda s: s.density)
    preconditioned: bool = _setting(
        False,
        "Adam-preconditioned sharpness λ1(P^-1 H) from the checkpoint's "
        "optimizer state, with the thresholds 2/lr and (2+2β1)/((1-β1)lr)",
        group="extras",
    )
    lr: float | None = _setting(
        None, "learning rate for the thresholds", group="extras", default_help="the checkpoint's"
    )
    reuse: bool | Literal["auto"] = _setting(
        "auto",
        "do not keep each batch's first-order graph between products (saves memory)",
        group="engine",
        off_flag="--no-reuse",
        report="never",
    )
    prompt_template: str | None = _setting(
        None,
        "use the one the adapter was trained with",
        group="data",
        report="when_set",
        unset=(None, DEFAULT_PROMPT_TEMPLATE),
        default_help="the one the checkpoint records, else the data's: raw for "
        "TRL's text prompt/completion, chat otherwise",
    )
    dora_norm: DoraNorm = _setting(
        "detached",
        "DoRA: the Hessian of peft's surrogate with the column norm "
        "detached (what DoRA trains with) or of the true loss with the norm "
        "differentiated",
        group="engine",
        report="dora_modules",
    )
    krylov_memory: float | None = _setting(
        None,
        "GiB the Krylov vectors may take on the device (on a GPU as "
        "much again in pinned host memory); beyond it kept products are "
        "dropped, then the basis stops growing",
        group="engine",
        report="never",
        metavar="GIB",
        default_help="sized from the free memory; the memory plan is printed before the first product",
    )
    block_size: int | Literal["rank"] | None = _setting(
        None,
        "lanczos: start vectors per block; 'rank' takes the block's LoRA rank r, the width of the cluster "
        "λ_max sits in at initialisation (r products a step)",
        group="blocks",
        report="when_set",
        metavar="P|rank",
        default_help="--top-k",
    )
    start: Start = _setting(
        "random",
        "lanczos: the start vector: random, structured (LoRA at initialisation: from each module's "
        "base-weight gradient G, its top singular pair; one first-order pass) or gradient (the block's own "
        "gradient); the last two keep a random half, so a start that misses the top cannot hide it",
        group="blocks",
        report="when_set",
        unset=(None, "random"),
    )
    together: bool = _setting(
        True,
        "per-module: solve the blocks one after another instead of side by side on shared passes",
        group="blocks",
        off_flag="--one-at-a-time",
        report="never",
    )
    pack_tokens: int | Literal["auto"] | None = _setting(
        None,
        "pack the samples, longest first, into as few batches as this many token slots (sequences × the "
        "longest) allow, or 'auto' from the memory plan: the same loss and Hessian in fewer, fuller batches",
        group="data",
        report="when_set",
        metavar="TOKENS|auto",
        default_help="batches of --batch-size as drawn",
    )
    lm_head_chunk: int | None = _setting(
        None,
        "run the LM head over this many loss tokens at a time, never every logit of a batch (the same "
        "values to round-off; double_backward or finite_difference)",
        group="engine",
        report="never",
        metavar="TOKENS",
        default_help="the plain head",
    )

    def __post_init__(self) -> None:
        # Normalise the forms a YAML file or a command line gives ("q_proj,v_proj", "0:4", lists) to tuples.
        modules = self.modules
        if isinstance(modules, str) or modules is None:
            modules = parse_modules(modules)
        elif not all(isinstance(name, str) for name in modules):
            raise UserError(f"modules must be module names such as q_proj, got {modules!r}.")
        layers = self.layers
        if isinstance(layers, int) and not isinstance(layers, bool):
            layers = (layers,)
        elif isinstance(layers, str) or layers is None:
            layers = parse_layers(layers)
        elif not all(isinstance(layer, int) and not isinstance(layer, bool) for layer in layers):
            raise UserError(f"layers must be layer indices, got {layers!r}.")
        object.__setattr__(self, "modules", tuple(modules) if modules else None)
        object.__setattr__(self, "layers", tuple(layers) if layers else None)
        _read_numbers(self, ("tol", "lr", "krylov_memory"))
        self._check()

    def _check(self) -> None:
        # The solver against the table as it is now, not the command line's snapshot of it.
        _check_choices(self, {name: allowed for name, allowed in CHOICES.items() if name != "solver"})
        spec = solvers.get(self.solver)
        if self.reuse not in (True, False, "auto"):
            raise UserError(f"reuse must be true, false or 'auto', got {self.reuse!r}.")
        _check_integers(
            self,
            (
                "samples",
                "batch_size",
                "max_length",
                "top_k",
                "max_iter",
                "trace_hvps",
                "density_steps",
                "density_runs",
            ),
            minimum=1,
        )
        _check_integers(self, ("data_seed", "seed"), minimum=0)
        _count_or_word(self, "block_size", "rank", "a whole number >= 1, 'rank' or left out (--block-size)")
        if isinstance(self.block_size, int) and self.block_size > self.max_iter:
            # One block step multiplies block_size vectors: a start block past the iteration cap would run
            # block_size products (and hold as many vectors) where max_iter allows fewer.
            raise UserError(
                f"block_size {self.block_size} is more than max_iter {self.max_iter} (--block-size, "
                "--max-iter): give a block of at most max_iter start vectors, or raise max_iter."
            )
        if self.block_size is not None:
            solvers.check(spec, "block_starts", fix=" (--solver), or leave --block-size out")
        _count_or_word(
            self, "pack_tokens", "auto", "a whole number of tokens >= 1, 'auto' or left out (--pack-tokens)"
        )
        _count_or_word(
            self, "lm_head_chunk", None, "a whole number of tokens >= 1 or left out (--lm-head-chunk)"
        )
        if self.lm_head_chunk is not None and self.backend == "forward_over_reverse":
            raise UserError(
                "lm_head_chunk (the chunked LM head) has no forward-over-reverse rule: use backend "
                "double_backward or auto (--backend), or leave --lm-head-chunk out."
            )
        if self.start != "random":
            solvers.check(
                spec, "block_starts", fix=f" (--solver) for start {self.start!r}, or leave --start out"
            )
        if not isinstance(self.together, bool):
            raise UserError(f"together must be true or false, got {self.together!r}.")
        _check_booleans(self, ("smallest", "trace", "density", "preconditioned"))
        object.__setattr__(
            self, "tol", tolerance(self.tol, "tol (--tol, the relative residual of a certified λ)")
        )
        if self.lr is not None and (not is_number(self.lr) or not self.lr > 0):
            raise UserError(f"lr must be a positive number (or left out), got {self.lr!r}.")
        if self.krylov_memory is not None:
            object.__setattr__(self, "krylov_memory", krylov_gib(self.krylov_memory))
        if self.task is not None and not isinstance(self.task, str):
            raise UserError(f"task must be a task spec or a file name, got {self.task!r}.")
        if self.prompt_template is not None:
            check_prompt_template(self.prompt_template)
        if self.blocks == "whole" and (self.modules or self.layers):
            raise UserError(
                "modules and layers pick per-module blocks: set blocks='per-module' "
                "(--blocks per-module) as well."
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "settings") -> MeasureSettings:
        """Settings from plain data (a YAML block); unknown keys and bad values are a :class:`UserError`."""
        return settings_from_mapping(cls, data, what="Hessian", source=source)

    @classmethod
    def with_overrides(cls, settings: MeasureSettings | None = None, **overrides: Any) -> MeasureSettings:
        """``settings`` (default: the defaults) with the fields named in ``overrides`` replaced; a name that is no
        field is a :class:`UserError` listing the fields."""
        base = settings if settings is not None else cls()
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise UserError(
                f"unknown Hessian setting(s) {', '.join(unknown)}: check the spelling "
                f"(known: {', '.join(names)})."
            )
        return dataclasses.replace(base, **overrides) if overrides else base

    def options(self, relative_to: MeasureSettings | None = None) -> dict[str, Any]:
        """The settings that differ from ``relative_to`` (default: the defaults), as plain YAML-able data.

        ``from_mapping`` of the result, over the same defaults, gives these settings back.
        """
        base = relative_to if relative_to is not None else MeasureSettings()
        return {
            field.name: plain(getattr(self, field.name))
            for field in dataclasses.fields(self)
            if getattr(self, field.name) != getattr(base, field.name)
        }

    def probe_only(self) -> MeasureSettings:
        """These settings less what does not change λ_max at initialisation: block selection, the extras
        (trace, density, preconditioning) and ``max_length`` (a probe sets its own) back at their defaults."""
        default = MeasureSettings()
        return dataclasses.replace(
            self,
            blocks=default.blocks,
            modules=None,
            layers=None,
            trace=default.trace,
            trace_hvps=default.trace_hvps,
            density=default.density,
            density_steps=default.density_steps,
            density_runs=default.density_runs,
            preconditioned=default.preconditioned,
            lr=default.lr,
            max_length=default.max_length,
        )

    def to_dict(self, *, dora: bool = False) -> dict[str, Any]:
        """The ``settings`` of a report (without the model's ``dtype``), from the fields' ``report`` rules:
        settings that are not in effect (λ_min by power iteration, the budget of a trace not asked for, ...) are
        recorded as off or None; ``dora_norm`` only for a model with DoRA modules (``dora``), so reports of
        other models are as they always were."""
        recorded: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            rule, active = field.metadata["report"], field.metadata["active"]
            value = getattr(self, field.name)
            if rule == "never" or (rule == "dora_modules" and not dora):
                continue
            if rule == "when_set" and value in field.metadata["unset"]:
                continue
            if active is not None and not active(self):
                value = False if isinstance(value, bool) else None
            recorded[field.name] = list(value) if isinstance(value, tuple) else value
        return recorded


@dataclass(frozen=True)
class DuringSettings:
    """In-loop probes (the sweep's ``hessian: {during: {...}}``): every ``every`` optimizer steps (and at step 0
    and the last step), on the first ``samples`` training examples in batches of ``batch_size``; ``blocks``
    ``whole`` (one block) or ``per-module`` (the headline is the largest block); ``solver`` to relative residual
    ``tol`` in at most ``max_iter`` iterations; ``preconditioned``: also λ₁(P⁻¹H); ``warm_start``: start each
    solve from the previous top Ritz vector; ``dora_norm``: for DoRA, the Hessian of peft's surrogate with the column
    norm detached (default, what DoRA trains with) or of the true loss (:mod:`hessian_lora.hessian.dora`).

    The vocabularies (blocks, backend, dora_norm) and checks are :class:`MeasureSettings`'; the solver is one
    that warm-starts (no PyHessian).

    Attributes:
        every: probe every this many optimizer steps (and at step 0 and the last step).
        samples: the first training examples the probe measures on.
        batch_size: examples per probe batch.
        blocks: ``whole`` (one block) or ``per-module`` (the headline is the largest block).
        solver: the eigen-solver (one that warm-starts).
        tol: the relative residual each solve must reach.
        max_iter: the iteration cap per solve.
        preconditioned: also measure Adam's λ₁(P⁻¹H).
        warm_start: start each solve from the previous probe's top Ritz vector (with a random half).
        backend: the Hessian-vector product backend.
        seed: the seed of the start vectors.
        dora_norm: DoRA: ``detached`` (peft's surrogate, what DoRA trains) or ``differentiated`` (the true loss).
    """

    every: int = 10
    samples: int = 16
    batch_size: int = 8
    blocks: Blocks = "whole"
    solver: ProbeSolver = solvers.DEFAULT_SOLVER
    tol: float = 1e-3
    max_iter: int = 60
    preconditioned: bool = True
    warm_start: bool = True
    backend: Backend = "auto"
    seed: int = 0
    dora_norm: DoraNorm = "detached"

    def __post_init__(self) -> None:
        prefix = "hessian.during."
        _read_numbers(self, ("tol",))
        _check_integers(self, ("every", "samples", "batch_size", "max_iter"), minimum=1, prefix=prefix)
        # the backend too: else only the first probe, after a run's setup, would find out
        _check_choices(self, {"blocks": BLOCKS, "backend": BACKENDS, "dora_norm": DORA_NORMS}, prefix=prefix)
        # The probe starts every solve from the last one's vector (or a seeded random one), and with preconditioned
        # also measures λ₁(P⁻¹H): the table must say the solver does both.
        spec = solvers.require(self.solver, "warm_starts", field=f"{prefix}solver")
        if self.preconditioned is True:
            solvers.check(
                spec, "preconditioned", field=f"{prefix}solver", fix=f", or set {prefix}preconditioned false"
            )
        object.__setattr__(self, "tol", tolerance(self.tol, f"{prefix}tol"))
        _check_integers(self, ("seed",), minimum=0, prefix=prefix)
        _check_booleans(self, ("preconditioned", "warm_start"), prefix=prefix)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "config") -> DuringSettings:
        """Settings from the YAML ``hessian.during`` mapping; unknown keys and bad values are a UserError."""
        return settings_from_mapping(cls, data, what="hessian.during", source=source)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data (``sharpness.json`` records them)."""
        return dataclasses.asdict(self)
