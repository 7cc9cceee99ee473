"""The `patient` plant kind: a virtual patient cohort (covariates, genotypes, co-medications), its PK/PD
(warfarin, metoprolol), vitals, labs, doses and adverse events. docs/MODEL-PATIENT.md describes the model."""
