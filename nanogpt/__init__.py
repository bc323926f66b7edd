"""The model side of nanogpt-tune: GPT, tokenizers, data, training, sampling. Knows nothing of Ray."""
