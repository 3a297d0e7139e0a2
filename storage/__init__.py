"""Generation history: SQLite (or any SQLAlchemy URL) for rows, the data folder for images."""

from .errors import StorageError
from .records import NewGeneration, NewImage
from .store import HistoryFilter, HistoryStore, Page

__all__ = ["HistoryFilter", "HistoryStore", "NewGeneration", "NewImage", "Page", "StorageError"]
