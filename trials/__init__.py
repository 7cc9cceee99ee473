"""In-silico clinical trials on virtual patients: designs, simulation of the arms, endpoints, analysis
(ANCOVA/PROCOVA, Kaplan-Meier), power, reports."""
