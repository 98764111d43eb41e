"""Encryption noise of the program's values, relative to the noise of a fresh ciphertext.

Every table lookup outputs a ciphertext with fresh noise; linear steps add the noises of
their inputs, weighted by the squares of their integer weights. concrete-python sizes the
keys of a circuit so that the noisiest lookup input still errs with at most ``p_error``:
one element far noisier than its neighbours makes every bootstrap of the circuit dearer.
Passes that multiply a lookup's input (rounding's gain) read these variances so as not to
create such an element.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import numpy as np

from .program import IntegerProgram
from .steps import AddSub, Conv, Index, MatMul, ReduceSum, Reshape, Shift, Step, TableLookup, step_rules

# one rule per step type: how its output's noise follows from its inputs'
NOISE_RULES, noise_rule = step_rules()


@noise_rule(Shift)
def _unchanged(step: Shift, variance: np.ndarray) -> np.ndarray:
    return variance  # adding a clear constant adds no noise


@noise_rule(MatMul, Conv)
def _weighted_sum(step: Step, variance: np.ndarray) -> np.ndarray:
    return replace(step, weight=np.square(step.weight.astype(np.int64))).numpy(variance)


@noise_rule(AddSub)
def _sum(step: AddSub, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a + b  # a difference is as noisy as a sum


@noise_rule(ReduceSum, Reshape, Index)
def _moved(step: Step, *variances: np.ndarray) -> np.ndarray:
    return step.numpy(*variances)  # elements moved or summed: variances move or add alike


@noise_rule(TableLookup)
def _fresh(step: TableLookup, variance: np.ndarray) -> np.ndarray:
    return np.ones_like(variance)  # element-wise: a bootstrap's output has fresh noise


def noise_variances(program: IntegerProgram) -> Optional[dict[str, np.ndarray]]:
    """Each value's noise variance for one sample (batch axis of 1), in units of fresh noise.

    None if the program has a step without a rule: callers then keep their own choice.
    """
    if not program.sample_shapes:
        return None
    values = {name: np.ones((1, *shape), dtype=np.int64)
              for name, shape in zip(program.input_names, program.sample_shapes)}
    for step in program.steps:
        rule = NOISE_RULES.get(type(step))
        if rule is None:
            return None
        values[step.output] = rule(step, *(values[name] for name in step.inputs))
    return values
