"""The training methods by name: the one list the config, the command line, the resource
estimate and the optimisers read.

A new TAO method is one entry of :data:`TAO` (its TAO type and options), plus its name in
:data:`BOUNDED` if it accepts a box and in :data:`HESSIAN` if it applies the Hessian;
its memory per rank is ``TAO_VECTORS`` in ``fem_dnn/app/resources.py``. No PETSc import:
the config reads this module.
"""

__all__ = ["BOUNDED", "HESSIAN", "METHODS", "MINIBATCH", "PAPER", "TAO"]

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
