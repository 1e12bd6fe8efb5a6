"""The studio: a local web app over the runs folder, the adapter registry and the request log.

`app.create_app(StudioSettings)` builds the FastAPI app (`specialize studio` serves it with
uvicorn): `runs` reads what the pages show, `paths` keeps path parameters inside their folders,
`jobs` runs training in subprocesses, `newrun` lists data files and the settings' help,
`playground` answers chat turns in-process; templates/ and static/ are the pages and their assets.
The blind review itself lives one layer down, in `specialize.review`.
"""
