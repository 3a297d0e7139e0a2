class StorageError(Exception):
    """A history operation failed; the message is user-facing and no partial row or file was left behind."""
