"""One run: its config resolved for the hardware, built once (model, strategy, batches, the one Learner, memory fit),
trained (a BatchNorm its strategy freezes folded into its conv), timed and evaluated (on a copy with its LoRA merged
and its BatchNorms folded: fold.py); what a worker returns to the driver.
"""
