"""Random model variables without compiling anything: ``model.init`` run eagerly compiles each
initialiser of each shape on its own (about 13 s for a fresh process here); its jitted form
compiles the whole network (about 5 s a model). The tests that need some variables of the right
structure take them from here instead.

A plain module, not a fixture, like ``_batches``.
"""

import numpy as np


def random_variables(model, size: int, seed: int = 0):
    """{'params', 'batch_stats'} of ``model`` for ``size`` x ``size`` inputs, as float32 NumPy
    arrays: Glorot-uniform kernels, BN scales in [0.5, 1.5], biases N(0, 0.1), statistics mean 0
    and variance 1 (the shapes from ``jax.eval_shape`` of ``model.init``)."""
    import jax
    import jax.numpy as jnp

    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               jnp.zeros((1, size, size, 3)), train=False))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name, shape = jax.tree_util.keystr(path), leaf.shape
        if name.endswith("['kernel']"):
            fan = int(np.prod(shape[:-2])) * (shape[-2] + shape[-1])
            limit = np.sqrt(6.0 / fan)
            values = rng.uniform(-limit, limit, shape)
        elif name.endswith("['scale']"):
            values = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("['bias']"):
            values = rng.normal(0.0, 0.1, shape)
        elif name.endswith("['mean']"):
            values = np.zeros(shape)
        elif name.endswith("['var']"):
            values = np.ones(shape)
        else:
            raise AssertionError(f"unexpected variable {name}")
        return values.astype(np.float32)

    return jax.tree_util.tree_map_with_path(
        fill, {"params": shapes["params"], "batch_stats": shapes["batch_stats"]})
