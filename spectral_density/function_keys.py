"""Compiled programs are keyed on the function object itself, as `jax.jit`.

A loss or matvec is a new computation whenever it is a new function object:
its code may read globals, closure cells or user objects that have changed
since an earlier object with the same code was compiled, and no comparison of
code and captured values can see every such change (a global array rebound,
an attribute of a captured config set, a captured object's state). So the
library does what `jax.jit` does: each cache of compiled pieces is keyed on
the function object (by identity), and a new closure compiles anew. To reuse
a compiled program across snapshots, reuse the function object: build the
loss once and pass what changes through the parameters or the batch, or call
`Operator.with_params` (the experiments' probe does both).

Mutating what a reused function object reads (a global, a captured object)
is not seen by a program already compiled from it, exactly as with `jax.jit`.

The caches are bounded LRUs: they keep at most `MAX_BATCH_FNS` functions (and
whatever those capture) alive.
"""

# Losses whose compiled pieces are kept at once.
MAX_FUNCTIONS = 32
# Caches of compiled pieces per batch function: each loss has three kinds
# (product, gradient, loss) in two dtypes (its own, float64).
MAX_BATCH_FNS = 6 * MAX_FUNCTIONS
