"""Training: `python -m tfcmir.train` (cli.py) runs loop.train, which reads the shards through
pipeline.py, places itself in the cluster (cluster.py), builds the model with its optimizer
(optimizer.py), saves through callbacks.py, and ends with the held-out genre probe (probe.py)."""
