"""q: the posterior over a clip's latents given the encoder's readings (docs/method.md §6).

    q(z_1:T) ∝ p(z_1:T) Π N(y_t | h(z_t), r_t²), KL(q ‖ p) of the sequence  kalman_smoother, markov_kl
    q(z_t | y_1..t), the causal marginals                                   kalman_filter
The factorized posterior (one diagonal Gaussian per frame) is the encoder's own output (`anmc.vae.nets`).
"""

from anmc.posterior.smoother import SmoothedPosterior, kalman_filter, kalman_smoother, markov_kl

__all__ = ["SmoothedPosterior", "kalman_smoother", "kalman_filter", "markov_kl"]
