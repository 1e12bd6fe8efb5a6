"""The run's records: typed models of the JSON files a run directory holds."""
