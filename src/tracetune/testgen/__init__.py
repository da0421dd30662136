"""Test writing as a task: the `testgen` workflow's prompt, grading (validity, wrong tests,
bug-revealing, mutation score, coverage), dataset loaders (KodCode, TestGenEval) and mining.

Seed 001 ("Testing Agent Fine-Tuning Plan") gives the prompt, the dataset mappings and the A -> B
-> C training stages; SWT-bench gives the fail-to-pass idea of a bug-revealing test.
"""
