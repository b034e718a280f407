"""Load-balancing-policy benchmark (bench/routing_bench.py): the workloads, the closed-loop chat
client, the replicas' counters, the Nginx access log, the report, and the GPU device runner.

Everything here but `render.py` is standard-library Python so that it runs unchanged on the lent
GPU machine (Python 3.12, no package index) beside the vLLM bundle."""
