"""A model run forward once it exists: is it causal (`audit`), text from it (`sample`), what it
costs to decode (`cost`), its loss past the training length (`lengths`), and lm-evaluation-harness's
tasks on it (`harness`)."""
