# my_worker.py for Quart: Flask-RQ's worker script (seed 000); Quart's app context is async.
import asyncio

from tests.flaskrq_quart import create_app, tq

app = create_app()


async def main() -> None:
    async with app.app_context():
        worker = tq.make_worker()
        await worker.start()


asyncio.run(main())
