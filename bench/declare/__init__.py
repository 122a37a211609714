"""What a run is, declared: its settings (config), the experiments, the datasets, the strategies, and the record a
run leaves (its fields, identity and file). Imports no torch: every layer above reads these.
"""
