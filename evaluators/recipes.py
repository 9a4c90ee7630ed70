"""Training recipes as plain data (no torch import, so the command line can show them as defaults)."""

# The final training's recipe where it differs from TrainConfig's proxy defaults: the recipe that
# matched a plain timm loop on CIFAR-10 (benchmarks/training_recipe.py, BENCHMARKS.md)
FINAL_RECIPE = {"batch_size": 128, "lr": 1e-3}
