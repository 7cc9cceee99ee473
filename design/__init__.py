"""Design of experiments and counterfactual what-if on the bioreactor twin (docs/DESIGN-OF-EXPERIMENTS.md)."""
