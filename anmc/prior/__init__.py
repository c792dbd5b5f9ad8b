"""The linearized GMM prior and its KL divergences (DESIGN.md §4; the formulas are in docs/method.md §2-5).

    p(z_t) ≈ Σ_k w_k N(z_t | f(c_k), J(c_k) S_k J(c_k)ᵀ + Q)           LinearizedPrior -> GaussianMixture
    KL(q ‖ p) ≈ Σ_m π_m (1/S) Σ_s [log q(z_ms) − log p(z_ms)]           gmm_kl_monte_carlo
    the same, q diagonal, p linearized, as one autograd node            LinearizedPrior.kl_monte_carlo
    TRANSITION_KL["elbo" | "elbo_mc" | "mixture" | "pairwise" | "pooled"]   transition_kl(name, ...)
    q(z_1:T) ∝ p(z_1:T) Π N(y_t | H z_t, r_t²), KL(q ‖ p) of the sequence         kalman_smoother, markov_kl
    q(z_t | y_1..t), the causal marginals                                     kalman_filter
"""

from anmc.prior.gmm import GaussianMixture
from anmc.prior.kl import gaussian_kl, gmm_kl_monte_carlo
from anmc.prior.linearize import LinearizedPrior
from anmc.prior.smoother import SmoothedPosterior, kalman_filter, kalman_smoother, markov_kl
from anmc.prior.transition import TRANSITION_KL, initial_kl, transition_kl

__all__ = [
    "GaussianMixture",
    "LinearizedPrior",
    "gmm_kl_monte_carlo",
    "gaussian_kl",
    "TRANSITION_KL",
    "transition_kl",
    "initial_kl",
    "SmoothedPosterior",
    "kalman_smoother",
    "kalman_filter",
    "markov_kl",
]
