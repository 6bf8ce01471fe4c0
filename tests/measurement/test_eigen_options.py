"""``hessian-lora eigen``'s options and ``eigen()``'s keywords are MeasureSettings' fields: checked here, so that a
field added to the settings cannot be missing from the command line (or differ in default or choices)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

from hessian_lora.cli.commands.eigen import settings_from_arguments
from hessian_lora.cli.main import build_parser
from hessian_lora.core.errors import UserError
from hessian_lora.measurement.measure import eigen
from hessian_lora.settings.measurement import CHOICES, MeasureSettings


def _eigen_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices["eigen"]


def test_every_setting_has_an_option_with_its_default_and_choices() -> None:
    actions = {action.dest: action for action in _eigen_parser()._actions}
    for field in dataclasses.fields(MeasureSettings):
        assert field.name in actions, f"MeasureSettings.{field.name} has no eigen option"
        action = actions[field.name]
        assert action.default == field.default, field.name
        assert (tuple(action.choices) if action.choices else None) == CHOICES.get(field.name), field.name
        assert action.help, field.name


def test_the_options_left_alone_are_the_default_settings() -> None:
    args = _eigen_parser().parse_args(["--method", "lora", "--out", "x.json"])
    assert settings_from_arguments(args) == MeasureSettings()
    args = _eigen_parser().parse_args(
        [
            "ckpt",
            "--out",
            "x.json",
            "--no-min",
            "--no-reuse",
            "--solver-seed",
            "3",
            "--tol",
            "1e-4",
            "--blocks",
            "per-module",
            "--layers",
            "0:2",
            "--block-size",
            "2",
            "--data",
            "d.jsonl",
        ]
    )
    assert settings_from_arguments(args) == MeasureSettings(
        smallest=False,
        reuse=False,
        seed=3,
        tol=1e-4,
        blocks="per-module",
        layers=(0, 1),
        block_size=2,
        task="d.jsonl",
    )


def test_eigen_takes_at_most_ten_parameters_of_its_own_and_checks_the_rest() -> None:
    own = [
        p for p in inspect.signature(eigen).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    assert len(own) <= 10
    with pytest.raises(UserError, match=r"unknown option\(s\) tolerance: .*known: task, samples"):
        eigen("ckpt", tolerance=1e-4)
    with pytest.raises(UserError, match="per-module"):
        eigen("ckpt", modules="q_proj")
