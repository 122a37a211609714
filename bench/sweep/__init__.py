"""Many runs: the one loop, the policies that propose runs from the records and decide from them (plain runs, tuning,
search, the advisor's race and what its budget buys), and the executors that run them (in this process, side by side, on Ray).
"""
