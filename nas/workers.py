"""Ray workers: one CPU and one torch thread each, training a candidate up to a rung."""
import ray

from evaluators.proxy import evaluate_rung

remote_evaluate = ray.remote(num_cpus=1, max_retries=0)(evaluate_rung)
