"""logctl: the command line of logstore (``cli.main:main``)."""

__all__: list[str] = []
