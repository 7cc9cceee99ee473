"""Outcome prediction for virtual patients: the EvoClone hybrid over a patient's recent history, its calibration
and conformal intervals, explanations, the model registry and drift (docs/OUTCOMES.md)."""
