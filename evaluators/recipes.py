"""Training recipes as plain data (no torch import, so the command line can show them as defaults)."""

# The search's proxy training (TrainConfig's and `etnas run`'s defaults)
PROXY_RECIPE = {"epochs": 3, "batch_size": 64, "lr": 2e-3}

# The final training's recipe where it differs from the proxy's: the recipe that
# matched a plain timm loop on CIFAR-10 (benchmarks/training_recipe.py, BENCHMARKS.md)
FINAL_RECIPE = {"batch_size": 128, "lr": 1e-3}
