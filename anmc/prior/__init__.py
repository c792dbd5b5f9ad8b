"""The linearized GMM prior and its KL divergences (the formulas are in docs/method.md §2-5).

    p(z_t) ≈ Σ_k w_k N(z_t | f(c_k), J(c_k) S_k J(c_k)ᵀ + Q)           LinearizedPrior -> GaussianMixture
    KL(q ‖ p) ≈ Σ_m π_m (1/S) Σ_s [log q(z_ms) − log p(z_ms)]           gmm_kl_monte_carlo
    the same, q diagonal, p linearized, as one autograd node            LinearizedPrior.kl_monte_carlo
    TRANSITION_KL["elbo" | "elbo_mc" | "mixture" | "pairwise" | "pooled"]   transition_kl(name, ...)
The posterior q (the smoother) is `anmc.posterior`.
"""

from anmc.prior.gmm import GaussianMixture
from anmc.prior.kl import gaussian_kl, gmm_kl_monte_carlo
from anmc.prior.linearize import LinearizedPrior
from anmc.prior.transition import TRANSITION_KL, initial_kl, transition_kl

__all__ = [
    "GaussianMixture",
    "LinearizedPrior",
    "gmm_kl_monte_carlo",
    "gaussian_kl",
    "TRANSITION_KL",
    "transition_kl",
    "initial_kl",
]
