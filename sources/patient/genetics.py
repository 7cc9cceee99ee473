"""Genotypes by ancestry: allele frequencies and Hardy-Weinberg genotype probabilities.

Frequencies are approximate population values (docs/MODEL-PATIENT.md, "Genotypes", cites them): CYP2C9 *2 and
*3 (the other alleles count as *1), VKORC1 -1639 G>A, and CYP2D6 metaboliser phenotypes (drawn as phenotypes,
not diplotypes). "other" is a mixed population between the three.

>>> probs = cyp2c9_probabilities("white")
>>> round(sum(probs.values()), 6), max(probs, key=probs.get)
(1.0, '*1/*1')
>>> vkorc1_probabilities("asian")["A/A"] > 0.7
True
"""

from __future__ import annotations

ANCESTRIES = ("white", "black", "asian", "other")
CYP2C9_GENOTYPES = ("*1/*1", "*1/*2", "*1/*3", "*2/*2", "*2/*3", "*3/*3")
VKORC1_GENOTYPES = ("G/G", "G/A", "A/A")
CYP2D6_PHENOTYPES = ("PM", "IM", "NM", "UM")

# allele frequencies (*2, *3) of CYP2C9
CYP2C9_ALLELES: dict[str, tuple[float, float]] = {
    "white": (0.12, 0.07),
    "black": (0.01, 0.01),
    "asian": (0.001, 0.04),
    "other": (0.06, 0.05),
}
VKORC1_A: dict[str, float] = {"white": 0.40, "black": 0.10, "asian": 0.90, "other": 0.45}
CYP2D6_PHENOTYPE_SHARES: dict[str, tuple[float, float, float, float]] = {  # PM, IM, NM, UM
    "white": (0.03, 0.17, 0.76, 0.04),
    "black": (0.02, 0.30, 0.63, 0.05),
    "asian": (0.01, 0.40, 0.58, 0.01),
    "other": (0.02, 0.25, 0.70, 0.03),
}


def _check(ancestry: str) -> None:
    if ancestry not in ANCESTRIES:
        raise ValueError(f"unknown ancestry {ancestry!r}; allowed: {', '.join(ANCESTRIES)}")


def cyp2c9_probabilities(ancestry: str) -> dict[str, float]:
    """P(genotype) under Hardy-Weinberg equilibrium."""
    _check(ancestry)
    p2, p3 = CYP2C9_ALLELES[ancestry]
    p1 = 1.0 - p2 - p3
    return {"*1/*1": p1 * p1, "*1/*2": 2 * p1 * p2, "*1/*3": 2 * p1 * p3, "*2/*2": p2 * p2,
            "*2/*3": 2 * p2 * p3, "*3/*3": p3 * p3}


def vkorc1_probabilities(ancestry: str) -> dict[str, float]:
    _check(ancestry)
    a = VKORC1_A[ancestry]
    return {"G/G": (1 - a) ** 2, "G/A": 2 * a * (1 - a), "A/A": a * a}


def cyp2d6_probabilities(ancestry: str) -> dict[str, float]:
    _check(ancestry)
    return dict(zip(CYP2D6_PHENOTYPES, CYP2D6_PHENOTYPE_SHARES[ancestry], strict=True))
