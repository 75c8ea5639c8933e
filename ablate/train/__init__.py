"""Training one model: the loop (`trainer`), its saved state (`checkpoint`), what it measures of the model (`diagnostics`)."""
