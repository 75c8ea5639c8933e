"""ablate's MLflow store: `store` is every call the run and compare code make of MLflow;
`records` builds what a run is tagged and parametrised with; `views` the MLflow UI's pages a study
opens on. The names they write are `ablate.core.schema`'s."""
