"""ablate's MLflow schema and store: `schema` names every tag, param and metric; `store` is
every call the run and compare code make of MLflow; `records` builds what a run is tagged and
parametrised with; `views` the MLflow UI's pages a study opens on."""
