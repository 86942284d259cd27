"""Model compression: distillation, kickstarting, pruning, low-rank factorisation, and the report.

Training-time methods plug into the one trainer (the policy pipeline's transforms in
`builders`, the teacher and callbacks of `setup.attach`);
`run.run_compress` is `mmrl compress`: it trains one compressed student per method and seed
through the trainer and writes the trade-off report (`report`).
"""
