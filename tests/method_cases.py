"""THE table of method test cases: one row per registered method, what the method tests expect of it.

Adding a method adds its row here (``tests/methods/test_methods.py`` refuses a registry method without one);
every method test is parametrised over this table, none keeps its own list of method names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodCase:
    """What the tests expect of one method.

    ``rewrites``: W changes at initialisation; ``zero_part``: the trainable tensors (a name fragment) that start at
    zero, so the initial function is kept without touching W (methods that rewrite W: none); ``peft_type``: the
    tuner in its saved adapter_config.json; ``saved_as``: the method a plain peft directory of it is read back as
    (itself, or plain LoRA when peft's config cannot say); ``needs_data``, ``float64``, ``peft_native``,
    ``own_optimizer``: the spec's facts; ``components_per_rank``: how many·r components of a matrix it takes.
    """

    name: str
    rewrites: bool = False
    zero_part: str = "lora_B"
    peft_type: str = "LORA"
    saved_as: str = "lora"
    needs_data: bool = False
    float64: bool = True
    peft_native: bool = True
    own_optimizer: bool = False
    components_per_rank: int = 1


CASES: dict[str, MethodCase] = {
    case.name: case
    for case in (
        MethodCase("lora"),
        MethodCase("pissa", rewrites=True, zero_part="", saved_as="pissa", float64=False),
        MethodCase("milora", rewrites=True, zero_part="", peft_native=False),
        MethodCase("initab", rewrites=True, zero_part="", peft_native=False),
        MethodCase("dora", saved_as="dora"),
        MethodCase("olora", rewrites=True, zero_part="", saved_as="olora", float64=False),
        MethodCase(
            "loraga", rewrites=True, zero_part="", saved_as="loraga", needs_data=True, components_per_rank=2
        ),
        MethodCase("gralora", zero_part="gralora_B", peft_type="GRALORA", saved_as="gralora"),
        MethodCase("randlora", zero_part="randlora_lambda", peft_type="RANDLORA", saved_as="randlora"),
        MethodCase("loft", own_optimizer=True),
        MethodCase("rslora", saved_as="rslora"),
        MethodCase("loraplus", own_optimizer=True),
        MethodCase("eva", saved_as="eva", needs_data=True),
    )
}
