"""Images: files in, batches out: images decoded once into a memory-mapped cache, split, and gathered a batch at a time.
Knows files and tensors; knows nothing about models.
"""
