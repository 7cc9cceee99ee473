"""Synthetic patient cohorts: a small autoregressive transformer generator and the SDMetrics quality gate."""
