"""The training methods by name: the one list the config, the command line, the resource
estimate and the optimisers read.

A new TAO method is one entry of :data:`TAO` (its TAO type and options), plus its name in
:data:`BOUNDED` if it accepts a box and in :data:`HESSIAN` if it applies the Hessian;
its memory per rank is its entry of :data:`TAO_VECTORS` (and of :data:`HESSIAN_WORK_VECTORS`
for a Newton method), which the memory model (:mod:`fem_dnn.app.memory`) reads. No PETSc
import: the config reads this module.
"""

__all__ = ["BOUNDED", "HESSIAN", "HESSIAN_WORK_VECTORS", "METHODS", "MINIBATCH", "PAPER", "TAO", "TAO_VECTORS"]

#: TAO methods: name -> (TAO type, extra options)
TAO = {
    "gd": ("bncg", {"tao_bncg_type": "gd"}),
    "cg": ("bncg", {"tao_bncg_type": "prp"}),
    "lbfgs": ("bqnls", {}),
    "newton": ("nls", {}),
    "trust": ("ntr", {}),
    "bnewton": ("bnls", {}),
    "btrust": ("bntr", {}),
}
#: Control-sized Vecs TAO allocates per method (its work vectors, line search, KSP;
#: measured with PETSc 3.25), without the L-BFGS pairs (the memory model's count).
TAO_VECTORS = {"gd": 12, "cg": 25, "lbfgs": 20, "newton": 9, "trust": 5, "bnewton": 14, "btrust": 13}
#: Control-sized temporaries of one Hessian action (the direction, the network's copy of
#: it, the accumulator, the result, the regulariser's action, the coordinate maps), per
#: Newton method (the memory model's count).
HESSIAN_WORK_VECTORS = {"newton": 5, "trust": 5, "bnewton": 5, "btrust": 9}
#: the TAO methods that accept a box of controls (``bounds``)
BOUNDED = ("gd", "cg", "lbfgs", "bnewton", "btrust")
#: the TAO methods that apply the Hessian (a tangent and a second-order costate solve)
HESSIAN = ("newton", "trust", "bnewton", "btrust")
#: mini-batch methods (:func:`fem_dnn.optimize.minibatch`)
MINIBATCH = ("sgd", "adam")
#: The learning-rate schedules of the mini-batch methods (:func:`fem_dnn.optimize.minibatch`).
LR_SCHEDULES = ("constant", "cosine")
#: the paper's method of successive approximations (:func:`fem_dnn.optimize.msa`)
PAPER = ("msa",)
#: every method ``training.method`` accepts
METHODS = (*TAO, *MINIBATCH, *PAPER)
