"""Client input quoted back in an error message: never whole (a 100 KB model id would come
back 100 KB long), always as a repr, so control characters cannot forge a log line."""


def echo(value: object, limit: int = 80) -> str:
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "…")
