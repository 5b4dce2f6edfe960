# my_worker.py: Flask-RQ's worker script (seed 000), with our names.
from tests.flaskrq_app import create_app, tq

app = create_app()

with app.app_context():
    worker = tq.make_worker()
    worker.work()
