"""Pre-registered experiments and `tracetune loop`: spec (the TOML file), prereg (frozen
hypotheses), loop (cached, resumable stages), analysis (comparisons, verdicts, decision) and report
(Markdown + self-contained HTML)."""
