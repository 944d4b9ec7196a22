"""What runs on the device: the model runner, the batch it is handed, and the sampler.

`batch.ModelBatch` is the only contract between the scheduler and the runner; the runner
flattens it into one ragged step, runs the model (CUDA graphs where they fit) and the sampler
picks the next tokens.
"""
