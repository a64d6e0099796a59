from chatd.cli import app

app()
