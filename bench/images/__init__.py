"""Images: files in, batches out: images decoded once into a memory-mapped cache and split (data.py, decode.py), and
gathered a batch at a time, an evaluation split prepared once per process (loader.py). Knows files and tensors;
knows nothing about models.
"""
