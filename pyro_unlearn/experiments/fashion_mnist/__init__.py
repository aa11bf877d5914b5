"""Fashion-MNIST with a Bayesian last layer (Nguyen, Low & Jaillet 2020, Sec. 4.3, Fig. 6).

A fully connected network 784 → 256 → 128 → 64 → 10 (ReLU) is trained as a point estimate by
Adam on all of D; its three hidden layers then stay fixed, and the 64 features of the last
hidden layer feed a Bayesian softmax layer, W ~ N(0, 1)^{64×10}, b ~ N(0, 1)^{10}, with a
mean-field Gaussian guide (``AutoNormal``, started at the trained layer) fitted by SVI on the
fixed features: q(θ|D). The paper's layer sizes and prior were lost from its text; these
are ours. D_e is 10 000 of the 60 000 training images drawn at random. q(θ|D_r) is retrained
from q(θ|D) by the ELBO on D_r (:func:`~pyro_unlearn.retrain`), and D_e is unlearned from
q(θ|D) by the EUBO and the reverse KL over the λ grid (:func:`~pyro_unlearn.lambda_sweep`).
:data:`PAPER` is the paper's scale with our step and particle counts (its text lost them: 64
particles, at most 1000 unlearning steps; about 40 minutes on one thread of a shared 2-core
CPU); it is the run committed in ``tutorials/fashion_mnist.ipynb``.

Each posterior is scored by the averaged predictive KL to the retrained one on D_e and on D_r,
test accuracy, membership inference on D_e against the 10 000 test images, and its trust verdict
(:mod:`pyro_unlearn.trust`). The quick mode runs the same pipeline on the subset shipped in
``pyro_unlearn/experiments/data`` (1200 training and 300 test images, MIT licence).

References:
    Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

    H. Xiao, K. Rasul, R. Vollgraf. Fashion-MNIST: a Novel Image Dataset for Benchmarking
    Machine Learning Algorithms. arXiv:1708.07747, 2017.
"""

from .report import plot_class_probabilities, reproduce
from .study import (
    CLASSES,
    PAPER,
    QUICK,
    REDUCED,
    SHOWN_CLASSES,
    SUBSET_DIR,
    last_layer_model,
    run,
    train_network,
)

__all__ = [
    "CLASSES",
    "PAPER",
    "QUICK",
    "REDUCED",
    "SHOWN_CLASSES",
    "SUBSET_DIR",
    "last_layer_model",
    "plot_class_probabilities",
    "reproduce",
    "run",
    "train_network",
]
