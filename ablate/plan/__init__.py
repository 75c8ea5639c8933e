"""From a study YAML to its trials, before any compute is spent: validation and sizes (`study`), equal budgets (`budget`, counted by `flops`), whether a model fits its device (`resources`)."""
