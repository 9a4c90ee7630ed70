"""Ray workers: one CPU and one torch thread each, running the proxy evaluation."""
import ray

from evaluators.proxy import evaluate_proxy

remote_evaluate = ray.remote(num_cpus=1, max_retries=0)(evaluate_proxy)
