"""Running a planned study: workers draw units from the work list (`claims`, `schedule`), each
unit trains one trial into one MLflow run (`trial`), search units ask Optuna first (`search`),
and the console shows where the study stands (`progress`)."""
