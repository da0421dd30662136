"""Production interactions: what an agent system asked a model and what came back.

    record.py    the one record type, `Interaction`, and its field list
    store.py     the interaction store (SQLite, `RUN/interactions.sqlite`): a record is written
                 whole or not at all, and survives `kill -9` of the writer
    redact.py    secrets out of records (API keys, bearer tokens, configurable patterns)
    proxy.py     `tracetune proxy`: an OpenAI-compatible server in front of any model spec that
                 records every interaction
    importers.py `tracetune import`: OpenAI JSONL, LiteLLM, Langfuse, inspect_ai and ATIF logs
    atif.py      tracetune trajectories as ATIF (Agent Trajectory Interchange Format) and back
    roles.py     agent roles by rules (system prompts, tool names, agent names) or by a model
    suites.py    per-role suites: near-duplicate removal, time-ordered splits, leakage check
    profile.py   `tracetune logs baseline`: seed 003's success/latency/provider profile
"""
