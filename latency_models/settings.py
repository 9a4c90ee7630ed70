"""How a timing is taken unless the user says otherwise; read by the command line before any heavy
import, and by the measurement."""

SWEEPS = 50  # interleaved calls of each architecture in a timing
REMEASURE_SHARE = 0.1  # share of the architectures timed a second time, for the noise floor
