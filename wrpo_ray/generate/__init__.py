"""Generation stage: vLLM pools per source model, reward scoring, selection of y_ws."""
