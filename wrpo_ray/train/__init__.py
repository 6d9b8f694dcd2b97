"""Training: preference-optimization losses, batching and the distributed training loop."""
