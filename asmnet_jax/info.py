"""Model size and cost, computed from the model itself.

Multiply-accumulates are counted by walking the jaxpr of one inference pass (batch 1) and adding,
for every convolution, ``output elements * kernel height * kernel width * input channels per group``
and, for every matrix product, ``output elements * contracted size`` (the backbone's 1x1
convolutions, computed as matrix products, count as convolutions). The depthwise convolutions are
traced in their native grouped form so that they appear as convolutions. GFLOPs are 2 x MACs of
the convolution, depthwise and dense layers (elementwise work such as BN and ReLU6 is not counted,
as in the paper).
"""

from __future__ import annotations

import math
from typing import Dict

import jax
import jax.numpy as jnp

from asmnet_jax.models import count_parameters, create_model


def _sub_jaxprs(eqn):
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def _count(jaxpr, totals: Dict[str, int]) -> None:
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            out = eqn.outvars[0].aval.shape
            kernel = eqn.invars[1].aval.shape
            rhs_spec = eqn.params["dimension_numbers"].rhs_spec
            per_output = kernel[rhs_spec[1]] * math.prod(kernel[d] for d in rhs_spec[2:])
            groups = eqn.params["feature_group_count"]
            kind = "depthwise" if groups > 1 and kernel[rhs_spec[1]] == 1 else "conv"
            totals[kind] += math.prod(out) * per_output
        elif name == "dot_general":
            out = eqn.outvars[0].aval.shape
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            # The backbone's 1x1 convolutions are matrix products too (models.PointwiseConv);
            # the module path in the name stack tells them from the dense heads.
            scopes = str(eqn.source_info.name_stack).split("/")
            kind = "conv" if "backbone" in scopes else "dense"
            totals[kind] += math.prod(out) * math.prod(lhs[d] for d in lhs_contract)
        for sub in _sub_jaxprs(eqn):
            _count(sub, totals)


def count_macs(model, variables, input_size: int) -> Dict[str, int]:
    """MACs of one inference pass at batch 1: {'conv', 'depthwise', 'dense', 'total'}."""
    images = jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32)
    closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, images)
    totals = {"conv": 0, "depthwise": 0, "dense": 0}
    _count(closed.jaxpr, totals)
    totals["total"] = sum(totals.values())
    return totals


def model_info(name: str, num_landmarks: int = 68, input_size: int = 224) -> dict:
    """Parameter counts, MACs and GFLOPs of ``name`` ('asmnet' or 'mnv2')."""
    model = create_model(name, num_landmarks, depthwise_impl="xla")
    images = jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
    counts = count_parameters(variables)
    macs = count_macs(model, variables, input_size)
    return {
        "model": name, "num_landmarks": num_landmarks, "input_size": input_size,
        "trainable_params": counts["trainable"], "batch_stats": counts["batch_stats"],
        "total_params": counts["total"],
        "macs": macs["total"], "macs_conv": macs["conv"], "macs_depthwise": macs["depthwise"],
        "macs_dense": macs["dense"], "gflops": 2 * macs["total"] / 1e9,
    }


def format_table(rows) -> str:
    """A plain-text table of :func:`model_info` rows."""
    header = (f"{'model':<8}{'points':>7}{'input':>7}{'trainable':>12}{'BN stats':>10}"
              f"{'total':>12}{'MMACs':>9}{'conv':>8}{'dw':>7}{'dense':>7}{'GFLOPs':>8}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['model']:<8}{r['num_landmarks']:>7}{r['input_size']:>7}"
            f"{r['trainable_params']:>12,}{r['batch_stats']:>10,}{r['total_params']:>12,}"
            f"{r['macs'] / 1e6:>9.1f}{r['macs_conv'] / 1e6:>8.1f}"
            f"{r['macs_depthwise'] / 1e6:>7.1f}{r['macs_dense'] / 1e6:>7.2f}{r['gflops']:>8.2f}")
    return "\n".join(lines)
