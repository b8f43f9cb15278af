"""`uvicorn flashfit_server.main:app`: the app built from the environment. Importing this loads
no model; the app's lifespan does, in a background thread."""

from flashfit_server.app import create_app

app = create_app()
