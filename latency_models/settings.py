"""How a timing is taken unless the user says otherwise; read by the command line before any heavy
import, and by the measurement."""

SWEEPS = 50  # interleaved calls of each architecture in a timing
REMEASURE_SHARE = 0.1  # share of the architectures timed a second time, for the noise floor
# Untimed calls of a model just before each timed one. Two would time a model warm, as served alone
# (tables read small models 28% slow without), but the kernel tally then predicts latency worse:
# 80-90% of held-out architectures within ±10% instead of 88-98% (BENCHMARKS.md, "timing context").
WARM_CALLS = 0
