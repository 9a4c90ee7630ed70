"""Training recipes as plain data (no torch import, so the command line can show them as defaults)."""

# The search's proxy training (TrainConfig's and `etnas run`'s defaults): every feasible candidate
# trains base_epochs, the best 1/eta of a rung go on eta times longer, up to `epochs` (the top rung)
PROXY_RECIPE = {"epochs": 6.5, "base_epochs": 0.5, "eta": 3, "promotion": "bands", "batch_size": 64, "lr": 2e-3}

# How a proxy's validation accuracy is read: a run's accuracies compare only with ones read the same way
PROXY_EVALUATION = "BatchNorm statistics re-estimated"
PROXY_EVALUATION_BEFORE = "BatchNorm running averages"  # that of the runs made before it was recorded

# The final training's recipe where it differs from the proxy's: the recipe that
# matched a plain timm loop on CIFAR-10 (benchmarks/training_recipe.py, BENCHMARKS.md)
FINAL_RECIPE = {"batch_size": 128, "lr": 1e-3}
