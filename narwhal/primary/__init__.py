"""The primary: headers, votes, certificates, the DAG, and catch-up."""

from narwhal.primary.primary import Primary

__all__ = ["Primary"]
