"""An ASGI middleware for the --middleware test: adds ``x-test-middleware: yes`` to answers."""


class AddHeader:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        async def send_with_header(message) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-test-middleware", b"yes")],
                }
            await send(message)

        await self.app(scope, receive, send_with_header)
