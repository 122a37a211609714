"""One run: its config resolved for the hardware, built once (model, strategy, batches, the one Learner, memory fit),
trained, timed and evaluated; what a worker returns to the driver.
"""
