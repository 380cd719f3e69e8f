"""One range check for the numeric flags of every console script, run right after parsing (before any output).

``RULES`` declares, per program, the allowed range of each numeric flag; ``parse_checked`` parses and checks them,
so a value out of range is a one-line ``OsmError`` naming the flag. NaN and Inf are refused for every flag.
tests/cli/test_bad_input_corpus.py checks that every ``int``/``float`` flag of every console script has a rule.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from osmedseg.errors import OsmError


@dataclass(frozen=True)
class Rule:
    """A closed or half-open numeric range; ``None`` leaves that side unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allows(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        if self.high is None:
            return f"{'greater than' if self.low_open else 'at least'} {_number(self.low)}"
        return (f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                f"{')' if self.high_open else ']'}")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


AT_LEAST_0 = Rule(0)
AT_LEAST_1 = Rule(1)
POSITIVE = Rule(0, low_open=True)                     # a finite value > 0
FRACTION = Rule(0, 1, low_open=True)                  # (0, 1]
UNIT = Rule(0, 1)                                     # [0, 1]
SEED = Rule(0, 2**32 - 1)
DATASET_ID = Rule(1, 999)
GPU_GB = Rule(1, 10_000)                              # GB of one GPU; below 1 GB no network fits
SPACING_MM = Rule(0.01, 100)                          # per axis; a finer target is checked against the data later

RULES: dict[str, dict[str, Rule]] = {
    "osm_make_demo": {"-seed": SEED, "-n_atlases": AT_LEAST_1, "-n_unlabeled": AT_LEAST_1, "-n_test": AT_LEAST_0},
    "osm_convert": {"-d": DATASET_ID, "--num-atlases": AT_LEAST_1, "--num-unlabeled": AT_LEAST_1,
                    "--num-test": AT_LEAST_0, "-seed": SEED, "--geometry-tolerance": AT_LEAST_0,
                    "--label-channels": AT_LEAST_0},
    "osm_plan_and_preprocess": {"-gpu_memory_target": GPU_GB, "-overwrite_target_spacing": SPACING_MM,
                                "-np": AT_LEAST_1, "-seed": SEED},
    "osm_train": {"--epochs": AT_LEAST_1, "--iters": AT_LEAST_1, "-lambda_smooth": AT_LEAST_0,
                  "-lambda_contrast": AT_LEAST_0, "-reg_lr": POSITIVE, "-lambda_seg": AT_LEAST_0,
                  "-lambda_rec": AT_LEAST_0, "-lambda_hint": AT_LEAST_0, "-hint_layers": AT_LEAST_1,
                  "-hint_warmup": UNIT, "-teacher_training": UNIT, "-ce_top_fraction": FRACTION, "-real_fraction": UNIT,
                  "-self_training": UNIT, "-lr": POSITIVE,
                  "-lambda_kd": AT_LEAST_0, "-lambda_con": AT_LEAST_0, "-rec_alpha": AT_LEAST_0,
                  "-kl_beta": AT_LEAST_0, "-switch_probability": UNIT, "-switch_max_boxes": AT_LEAST_1,
                  "-sam_input_size": Rule(32, 4096), "-kd_slices_per_volume": AT_LEAST_0, "-kd_lr": POSITIVE,
                  "-lambda_consistency": AT_LEAST_0, "-ema_momentum": UNIT, "-seed": SEED},
    "osm_predict": {"-step_size": FRACTION, "-tile_batch_size": AT_LEAST_1, "-memory_budget_gb": POSITIVE,
                    "-num_parts": AT_LEAST_1, "-part_id": AT_LEAST_0, "-npp": AT_LEAST_1, "-nps": AT_LEAST_1,
                    "-seed": SEED},
    "osm_evaluate": {"-l": AT_LEAST_0, "-np": AT_LEAST_0},
    "osm_overlay": {},
}


def numeric_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every ``int``/``float`` option of ``parser`` and its subcommands (options with ``choices`` excepted)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                found += [a for a in numeric_actions(sub) if a not in found]
        elif action.type in (int, float) and action.choices is None:
            found.append(action)
    return found


def check_numeric_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Raise a one-line OsmError for the first numeric flag of ``args`` outside its declared range."""
    rules = RULES[parser.prog]
    for action in numeric_actions(parser):
        value = getattr(args, action.dest, None)
        flag = action.option_strings[0]
        for item in value if isinstance(value, list) else [] if value is None else [value]:
            if not rules[flag].allows(item):
                raise OsmError(f"{flag} must be {rules[flag].describe()}, got {item}")


def parse_checked(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, then the range check of every numeric flag."""
    args = parser.parse_args(argv)
    check_numeric_args(parser, args)
    return args
