"""What a trained run tells: latents against the truth, counterfactual videos, pictures, physics checks.

    evaluate / encode_frames                              anmc.analysis.evaluate
    intervene / Counterfactual                            anmc.analysis.intervene
    latent_plot                                           anmc.analysis.plots
    swings / period / amplitude / ... (signals)           anmc.analysis.signals
    check_interventions / self_check (per-system table)   anmc.analysis.physics_checks
"""
