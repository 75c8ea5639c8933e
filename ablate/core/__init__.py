"""What every layer stands on, without torch: one-line errors (`errors`), who owns a file or a
claim (`processes`), a study typed section by section (`config`, and what it asks beyond training,
`questions`), and the name of every tag, param and metric a run is tracked by (`schema`)."""
