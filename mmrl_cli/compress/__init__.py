"""Model compression: distillation, kickstarting, pruning, low-rank factorisation, and the report.

Training-time methods plug into the one trainer (`setup.prepare_policy` and `setup.attach`);
`run.run_compress` is `mmrl compress`: it trains one compressed student per method and seed
through the trainer and writes the trade-off report (`report`).
"""
